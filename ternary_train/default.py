"""Rebuild the embedded default model with one command.

    python -m ternary_train.default [--out DIR] [--install]

Steps, each skipped when its output already exists (so an interrupted rebuild is
rerun with the same command and continues from the last training checkpoint):
1. the corpus (ternary_train.corpus: Debian packages -> train.txt / val.txt);
2. the tokenizer (ternary_train.tokenizer, vocab 4096, + uint16 token streams);
3. training: qat --config base --threads 2 --resume (a one-hour wall-clock
   schedule; export to hf/ and model.tpk);
4. the engine's perplexity and bits/byte of model.tpk on the validation split
   (evaltpk), which must match the trainer's;
5. with --install, model.tpk is copied over engine/data/default.tpk.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

# the BLAS threads sleep instead of spinning while waiting: on a shared 2-core machine
# spinning threads steal the other thread's core (must be set before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import corpus as corpus_mod  # noqa: E402
from . import tokenizer as tokenizer_mod  # noqa: E402

DEFAULT_RUN = Path.home() / ".cache" / "ternary-engine" / "runs" / "base"
VOCAB = 4096
ENGINE_DEFAULT = Path(__file__).resolve().parent.parent / "engine" / "data" / "default.tpk"


def rebuild(out: Path, corpus: Path, threads: int = 2, install: bool = False) -> dict:
    from . import evaltpk, qat
    out, corpus = Path(out).expanduser(), Path(corpus).expanduser()
    if not ((corpus / "train.txt").exists() and (corpus / "val.txt").exists()):
        corpus_mod.main(["--out", str(corpus)])
    if not (corpus / f"tok{VOCAB}.val.npy").exists():
        tokenizer_mod.main(["--corpus", str(corpus), "--vocab", str(VOCAB)])
    if not (out / "final.json").exists():
        qat.main(["--config", "base", "--threads", str(threads), "--resume",
                  "--out", str(out), "--corpus", str(corpus)])
    final = json.loads((out / "final.json").read_text())
    if not final.get("tpk"):
        raise SystemExit(f"{out} has no model.tpk (engine.convert unavailable?)")
    res = evaltpk.evaluate_tpk(Path(final["tpk"]), corpus, VOCAB)
    res["trainer_val_ppl"] = final["val_ppl"]
    if not math.isclose(res["val_ppl"], final["val_ppl"], rel_tol=1e-3):
        raise SystemExit(f"engine ppl {res['val_ppl']:.4f} != trainer ppl {final['val_ppl']:.4f}")
    if install:
        shutil.copyfile(final["tpk"], ENGINE_DEFAULT)
        res["installed"] = str(ENGINE_DEFAULT)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description="rebuild the embedded default model")
    ap.add_argument("--out", type=Path, default=DEFAULT_RUN, help="the training run's directory")
    ap.add_argument("--corpus", type=Path, default=corpus_mod.DEFAULT_OUT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true", help="copy model.tpk to engine/data/default.tpk")
    args = ap.parse_args(argv)
    print(json.dumps(rebuild(args.out, args.corpus, args.threads, args.install), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
