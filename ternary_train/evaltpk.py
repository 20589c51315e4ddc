"""Perplexity and bits/byte of a .tpk on the validation split, computed by the engine
with exactly the trainer's definition (qat.evaluate): checks that the exported model
is the trained model, and compares models with different tokenizers or contexts.

    python -m ternary_train.evaltpk model.tpk [--corpus DIR] [--vocab 4096] [--seq-len N]

Definition: the token stream of val.txt (tokenizer.encode_file) is cut into
non-overlapping windows of seq_len tokens (default: the model's context; the last
window shorter); each window w is fed as [bos] + w[:-1] and every token of w is
scored; ppl = exp(mean NLL). bits/byte = total NLL / ln 2 / (UTF-8 bytes of val.txt):
every token of the file is scored once, so this is the model's code length for the
file, independent of the tokenizer.
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


def bits_per_byte(nll: float, n_tokens: int, n_bytes: int) -> float:
    """Mean NLL (nats/token) over n_tokens covering n_bytes of text -> bits per byte."""
    return nll * n_tokens / math.log(2) / n_bytes


def evaluate_tpk(tpk: Path, corpus: Path = DEFAULT_OUT, vocab: int = 4096,
                 seq_len: int | None = None, bos: int = 1) -> dict:
    """The engine's val loss, perplexity and bits/byte for a .tpk (its tokenizer must be
    the corpus' tok{vocab}.model, whose val stream is tok{vocab}.val.npy)."""
    from engine import Engine
    corpus = Path(corpus).expanduser()
    eng = Engine(str(tpk))
    seq_len = seq_len or eng.ctx
    stream = np.load(corpus / f"tok{vocab}.val.npy", mmap_mode="r", allow_pickle=False)
    text = (corpus / "val.txt").read_text(encoding="utf-8")
    first = eng.tokenizer.encode(text.split("\n", 1)[0], add_bos=False)   # a whole paragraph
    if stream[:len(first)].tolist() != first:
        raise ValueError(f"{tpk}'s tokenizer is not {corpus / f'tok{vocab}.model'}")
    nll, n = engine_nll(eng, stream, seq_len, bos)
    n_bytes = len(text.encode("utf-8"))
    return {"tpk": str(tpk), "seq_len": seq_len, "val_tokens": n, "val_bytes": n_bytes,
            "val_loss": nll, "val_ppl": math.exp(nll), "bits_per_byte": bits_per_byte(nll, n, n_bytes)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tpk", type=Path)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", dest="seq_len", type=int, default=None,
                    help="tokens per window (default: the model's context)")
    ap.add_argument("--bos", type=int, default=1)
    ap.add_argument("--final-json", type=Path, default=None,
                    help="the run's final.json, to print the relative difference")
    args = ap.parse_args(argv)
    out = evaluate_tpk(args.tpk, args.corpus, args.vocab, args.seq_len, args.bos)
    if args.final_json is not None:
        ref = json.loads(args.final_json.read_text())
        out["trainer_val_ppl"] = ref["val_ppl"]
        out["ppl_rel_diff"] = out["val_ppl"] / ref["val_ppl"] - 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
