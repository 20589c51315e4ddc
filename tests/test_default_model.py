"""The embedded default model (engine/data/default.tpk): exact golden text, the same on every ISA.

The golden strings were produced by running this engine on the shipped model; a change to the
model, the kernels' arithmetic or the sampler that alters them must be deliberate. Every sampling
parameter is passed explicitly, so a change of the CLI's or generate()'s defaults does not move them.
"""
import subprocess
import sys

import pytest

from engine import Engine
from engine.runtime.generate import DEFAULT_MODEL

PROMPT = "It is a truth universally acknowledged"
# The sampling settings the seeded golden values were made with (llama.cpp's defaults, the CLI's
# before issue 19); passed explicitly so a change of defaults does not move them.
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0,
                frequency_penalty=0.0, presence_penalty=0.0)
SAMPLING_FLAGS = ["--temp", "0.8", "--top-k", "40", "--top-p", "0.95", "--min-p", "0.05",
                  "--repeat-penalty", "1.0", "--frequency-penalty", "0", "--presence-penalty", "0"]
GOLDEN_GREEDY = (" to the Lord.\nVerse 1. The Lord is the God of the Lord.\n1. The Lord's people.\n"
                 "2. The Lord's people.\n2. The Lord's people.\n2. The Lord's people.\n3. The Lord's "
                 "people.\n")
GOLDEN_GREEDY_IDS = [285, 263, 452, 4040, 3, 491, 4018, 4051, 4040, 355, 452, 306, 263, 347, 274, 263]
GOLDEN_SEED0 = (". The word is, by the law of Christ, and of the soul, which is the most of the "
                "truth. He is an honour to God in the world, and the Spirit in all the glory of "
                "his own grace, and in the presence of his promise. He is a blessed God, and the "
                "Lord is")


@pytest.fixture(scope="module")
def eng():
    return Engine(kv_dtype="f32")


def test_greedy_golden_text(eng, isa):
    assert eng.generate(PROMPT, max_new_tokens=64, **dict(SAMPLING, temperature=0)) == GOLDEN_GREEDY


def test_greedy_golden_ids(eng):
    ids = eng.tokenizer.encode(PROMPT)
    assert eng.generate(ids, max_new_tokens=16, **dict(SAMPLING, temperature=0)) == GOLDEN_GREEDY_IDS


def test_seeded_sampling_golden_text(eng):
    out = eng.generate(PROMPT, max_new_tokens=64, seed=0, **SAMPLING)
    assert out == GOLDEN_SEED0


def test_ternary_run_seed0_golden_text():
    # the CLI with the same sampling parameters as flags gives the same text as generate()
    r = subprocess.run([sys.executable, "-m", "engine.cli", PROMPT, "-n", "64", "--seed", "0",
                        "--kv-dtype", "f32", *SAMPLING_FLAGS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == PROMPT + GOLDEN_SEED0 + "\n"
    assert "generation 64 tok" in r.stderr


def test_readme_first_command_runs():
    # The README's first command exactly, with whatever the CLI's sampling defaults are: the
    # prompt is echoed and 64 tokens of text follow (the text itself is pinned above).
    r = subprocess.run([sys.executable, "-m", "engine.cli", PROMPT, "-n", "64", "--seed", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(PROMPT) and len(r.stdout) > len(PROMPT) + 64
    assert "generation 64 tok" in r.stderr


def test_default_model_shape_and_size(eng):
    # issue 19: context >= 512 tokens, the shipped file <= 16 MB
    assert eng.config["max_position"] >= 512 and eng.ctx >= 512
    assert DEFAULT_MODEL.stat().st_size <= 16 * 1024 * 1024
    eng.generate(list(range(3, 503)), max_new_tokens=8, temperature=0)   # a 508-token sequence fits


def test_ternary_ppl_matches_forward(tmp_path, eng):
    import math

    import numpy as np

    from engine.ppl import main as ppl_main

    text = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife.\n")
    f = tmp_path / "text.txt"
    f.write_text(text)
    ids = eng.tokenizer.encode(text, add_bos=False)
    logits = eng.forward([eng.tokenizer.bos_id] + ids[:-1]).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    expected = math.exp(-logp[np.arange(len(ids)), ids].mean())
    r = subprocess.run([sys.executable, "-m", "engine.ppl", str(f), "--kv-dtype", "f32"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"perplexity {expected:.3f}" in r.stdout
    assert ppl_main([str(tmp_path / "missing.txt")]) == 2
