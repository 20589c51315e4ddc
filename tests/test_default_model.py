"""The embedded default model (engine/data/default.tpk): exact golden text, the same on every ISA.

The golden strings were produced by running this engine on the shipped model; a change to the
model, the kernels' arithmetic or the sampler that alters them must be deliberate.
"""
import subprocess
import sys

import pytest

from engine import Engine

PROMPT = "It is a truth universally acknowledged"
GOLDEN_GREEDY = (" to be a man.\nVerse 1. The Lord is the Lord's word.\n2. The Lord is the Lord.\n"
                 "1. The Lord is the Lord.\n1. The Lord is the Lord.\n1. The Lord is the Lord.\n"
                 "1. The Lord is the Lord.")
GOLDEN_GREEDY_IDS = [285, 298, 262, 418, 4040, 3, 491, 4018, 4051, 4040, 355, 452, 306, 263, 452, 4060]
# The sampling settings the seeded golden values were made with (llama.cpp's defaults, the CLI's
# before issue 19); passed explicitly so a change of defaults does not move them.
OLD_DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.0,
                    frequency_penalty=0.0, presence_penalty=0.0)
OLD_FLAGS = ["--temp", "0.8", "--top-k", "40", "--top-p", "0.95", "--min-p", "0.05", "--repeat-penalty", "1.0",
             "--frequency-penalty", "0", "--presence-penalty", "0"]
GOLDEN_SEED0 = (" by the Lord's hands. But what was no more a man to be sure. The word of God, when it is"
                " as an mowicent, but it is a unstary, that it is very good to be unplendate, and to be"
                " more than a great man, that")


@pytest.fixture(scope="module")
def eng():
    return Engine()


def test_greedy_golden_text(eng, isa):
    assert eng.generate(PROMPT, max_new_tokens=64, **dict(OLD_DEFAULTS, temperature=0)) == GOLDEN_GREEDY


def test_greedy_golden_ids(eng):
    ids = eng.tokenizer.encode(PROMPT)
    assert eng.generate(ids, max_new_tokens=16, **dict(OLD_DEFAULTS, temperature=0)) == GOLDEN_GREEDY_IDS


def test_seeded_sampling_golden_text(eng):
    out = eng.generate(PROMPT, max_new_tokens=64, seed=0, **OLD_DEFAULTS)
    assert out == GOLDEN_SEED0


def test_ternary_run_default_model_seed0():
    # The README's first command: the embedded model, llama.cpp's sampling defaults, seed 0.
    r = subprocess.run([sys.executable, "-m", "engine.cli", PROMPT, "-n", "64", "--seed", "0", *OLD_FLAGS],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == PROMPT + GOLDEN_SEED0 + "\n"
    assert "generation 64 tok" in r.stderr


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
    r = subprocess.run([sys.executable, "-m", "engine.ppl", str(f)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"perplexity {expected:.3f}" in r.stdout
    assert ppl_main([str(tmp_path / "missing.txt")]) == 2
