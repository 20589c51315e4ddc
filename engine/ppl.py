"""ternary-ppl: perplexity of a .tpk model on a text file.

The file's tokens are cut into non-overlapping windows of --ctx tokens; each window w is fed
as [bos] + w[:-1] and every token of w is scored; ppl = exp(mean negative log-likelihood).
This is the trainer's definition (ternary_train/qat.py evaluate), so the two agree on a model.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def window_nll(eng, ids, seq_len: int, bos: int) -> tuple[float, int]:
    """Mean NLL (nats/token) and token count of ids scored in windows of seq_len tokens."""
    ids = np.asarray(ids, dtype=np.int64)
    total, count = 0.0, 0
    for s in range(0, len(ids), seq_len):
        w = ids[s:s + seq_len]
        logits = np.asarray(eng.forward([bos] + w[:-1].tolist()), dtype=np.float64)  # (T, V)
        m = logits.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        total += float((lse - logits[np.arange(len(w)), w]).sum())
        count += len(w)
    return total / max(count, 1), count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ternary-ppl", description=__doc__.split("\n")[0])
    ap.add_argument("args", nargs="+", metavar="[MODEL.tpk] FILE",
                    help="the text file to score; a .tpk before it (default: the embedded model)")
    ap.add_argument("--ctx", type=int, default=256, help="tokens per window (default 256)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: cores)")
    ap.add_argument("--kv-dtype", default="f16", help="KV cache dtype: f32, f16 (default) or int8")
    args = ap.parse_args(argv)
    if len(args.args) > 2:
        ap.error("expected [MODEL.tpk] FILE")
    model, text_file = (args.args if len(args.args) == 2 else (None, args.args[0]))
    from engine import Engine
    from engine.formats.tpk import TpkError
    try:
        if args.ctx < 2:
            raise ValueError("--ctx must be >= 2")
        text = Path(text_file).read_text(encoding="utf-8")
        eng = Engine(model, threads=args.threads, ctx=args.ctx, kv_dtype=args.kv_dtype)
        ids = eng.tokenizer.encode(text, add_bos=False)
        if not ids:
            raise ValueError(f"{text_file} holds no text")
        bos = eng.tokenizer.bos_id if eng.tokenizer.bos_id is not None else ids[0]
        nll, n = window_nll(eng, ids, args.ctx, bos)
    except (TpkError, OSError, UnicodeDecodeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} tokens, loss {nll:.4f} nats/token, perplexity {math.exp(nll):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
