"""Perplexity of a .tpk on the validation split, computed by the engine with exactly
the trainer's definition (qat.evaluate), to check that the exported model is the
trained model.

    python -m ternary_train.evaltpk model.tpk [--corpus DIR] [--vocab 4096] [--seq-len 256]

Definition: the token stream of val.txt (tokenizer.encode_file) is cut into
non-overlapping windows of seq_len tokens (the last one shorter); each window w is
fed as [bos] + w[:-1] and every token of w is scored; ppl = exp(mean NLL).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from engine.ppl import window_nll as engine_nll

from .corpus import DEFAULT_OUT


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tpk", type=Path)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", dest="seq_len", type=int, default=256)
    ap.add_argument("--bos", type=int, default=1)
    ap.add_argument("--final-json", type=Path, default=None,
                    help="the run's final.json, to print the relative difference")
    args = ap.parse_args(argv)
    from engine import Engine
    eng = Engine(str(args.tpk))
    stream = np.load(args.corpus.expanduser() / f"tok{args.vocab}.val.npy", mmap_mode="r", allow_pickle=False)
    nll, n = engine_nll(eng, stream, args.seq_len, args.bos)
    out = {"tpk": str(args.tpk), "val_tokens": n, "val_loss": nll, "val_ppl": math.exp(nll)}
    if args.final_json is not None:
        ref = json.loads(args.final_json.read_text())
        out["trainer_val_ppl"] = ref["val_ppl"]
        out["ppl_rel_diff"] = math.exp(nll) / ref["val_ppl"] - 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
