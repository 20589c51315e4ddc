"""ternary-ppl: perplexity of a .tpk model on a text file.

The file's tokens are cut into non-overlapping windows of --ctx tokens; each window w is fed
as [bos] + w[:-1] and every token of w is scored; ppl = exp(mean negative log-likelihood).
This is the trainer's definition (ternary_train/qat.py evaluate), so the two agree on a model.

--score half is llama.cpp's `llama-perplexity` convention instead: the text is tokenized as
llama.cpp does (bos first only if the model adds one), cut into floor(n/ctx) chunks of ctx tokens
(a shorter tail is dropped); a chunk's first token is replaced by bos if the model adds one, and
only the second half is scored: the tokens at positions ctx/2+1 .. ctx-1, each predicted from
everything before it in the chunk (ctx - 1 - ctx/2 tokens per chunk).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from engine.runtime.kvcache import DEFAULT_KV_DTYPE


def window_nll(eng, ids, seq_len: int, bos: int) -> tuple[float, int]:
    """Mean NLL (nats/token) and token count of ids scored in windows of seq_len tokens."""
    ids = np.asarray(ids, dtype=np.int64)
    total, count = 0.0, 0
    for s in range(0, len(ids), seq_len):
        w = ids[s:s + seq_len]
        logits = eng.forward([bos] + w[:-1].tolist())  # (T, V)
        total += float(_nll_rows(logits, w).sum())
        count += len(w)
    return total / max(count, 1), count


def _nll_rows(logits, targets) -> np.ndarray:
    """Negative log-likelihood of each target under its row of logits (T, V)."""
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    return lse - logits[np.arange(len(targets)), targets]


def half_window_nll(eng, ids, n_ctx: int, bos: int | None) -> tuple[float, int]:
    """llama-perplexity's score: mean NLL and count over the second half of each n_ctx chunk.

    ids already carry a leading bos if the model adds one; bos not None also replaces the first
    token of every chunk (as llama.cpp does when the vocabulary's add_bos is set)."""
    ids = np.asarray(ids, dtype=np.int64)
    n_chunk, first = len(ids) // n_ctx, n_ctx // 2
    if n_chunk < 2:
        raise ValueError(f"--score half needs at least {2 * n_ctx} tokens; the text has {len(ids)}")
    total, count = 0.0, 0
    for c in range(n_chunk):
        chunk = ids[c * n_ctx:(c + 1) * n_ctx].copy()
        targets = chunk[first + 1:].copy()  # the original tokens, bos replacement or not
        if bos is not None:
            chunk[0] = bos
        logits = np.asarray(eng.forward(chunk.tolist()))[first:n_ctx - 1]  # (n_ctx-1-first, V)
        total += float(_nll_rows(logits, targets).sum())
        count += len(targets)
    return total / count, count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="ternary-ppl", description=__doc__.split("\n")[0])
    ap.add_argument("args", nargs="+", metavar="[MODEL.tpk] FILE",
                    help="the text file to score; a .tpk before it (default: the embedded model)")
    ap.add_argument("--ctx", type=int, default=256, help="tokens per window (default 256)")
    ap.add_argument("--score", choices=("all", "half"), default="all",
                    help="all: every token of each window, after a bos (default); half: "
                         "llama.cpp llama-perplexity's convention (second half of each chunk)")
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: cores)")
    ap.add_argument("--kv-dtype", default=DEFAULT_KV_DTYPE, help="KV cache dtype: f32, f16 (default) or int8")
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
        nll, n = _score(eng, text, text_file, args.ctx, args.score)
    except (TpkError, OSError, UnicodeDecodeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} tokens, loss {nll:.4f} nats/token, perplexity {math.exp(nll):.3f}")
    return 0


def _score(eng, text: str, text_file: str, ctx: int, score: str) -> tuple[float, int]:
    tok = eng.tokenizer
    if score == "half":  # tokenized as llama.cpp's common_tokenize(text, add_special=true)
        adds_bos = bool(tok.add_bos and tok.bos_id is not None)
        ids = tok.encode(text, add_bos=adds_bos, parse_special=False)
        return half_window_nll(eng, ids, ctx, tok.bos_id if adds_bos else None)
    ids = tok.encode(text, add_bos=False)
    if not ids:
        raise ValueError(f"{text_file} holds no text")
    bos = tok.bos_id if tok.bos_id is not None else ids[0]
    return window_nll(eng, ids, ctx, bos)


if __name__ == "__main__":
    sys.exit(main())
