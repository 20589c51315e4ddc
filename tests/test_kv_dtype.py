"""The KV cache dtypes (engine/runtime/kvcache.py) through the model, the engine, the batch and
the command lines: f16 and int8 caches against f32 on the embedded default model (trained on
real text, so its attention is a real one's), memory, prefill = decode, and bad names.

Tolerances (the issue's targets, and what the model gives): perplexity within 0.1 % of f32's
for f16 and 1 % for int8; logits within 2 % of the largest f32 logit (measured ~0.6-0.8 %:
the int8 activation quantization of every ternary linear turns tiny attention differences
into occasional rounding flips).
"""
import math
import subprocess
import sys

import numpy as np
import pytest

from engine import Engine
from engine.ppl import window_nll
from engine.runtime.batch import generate as batch_generate
from engine.runtime.kvcache import KV_DTYPES, KVCache
from engine.runtime.sampling import Sampler, SamplingParams

# Pride and Prejudice, chapter 1 (public domain): English prose like the model's training text.
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on "
    "his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding "
    "families, that he is considered the rightful property of some one or other of their daughters. "
    "\"My dear Mr. Bennet,\" said his lady to him one day, \"have you heard that Netherfield Park is "
    "let at last?\" Mr. Bennet replied that he had not. \"But it is,\" returned she; \"for Mrs. Long "
    "has just been here, and she told me all about it.\" Mr. Bennet made no answer. \"Do you not want "
    "to know who has taken it?\" cried his wife impatiently. \"You want to tell me, and I have no "
    "objection to hearing it.\" This was invitation enough. \"Why, my dear, you must know, Mrs. Long "
    "says that Netherfield is taken by a young man of large fortune from the north of England; that "
    "he came down on Monday in a chaise and four to see the place, and was so much delighted with it, "
    "that he agreed with Mr. Morris immediately; that he is to take possession before Michaelmas, and "
    "some of his servants are to be in the house by the end of next week.\" \"What is his name?\" "
    "\"Bingley.\" \"Is he married or single?\" \"Oh! Single, my dear, to be sure! A single man of "
    "large fortune; four or five thousand a year. What a fine thing for our girls!\" \"How so? How "
    "can it affect them?\" \"My dear Mr. Bennet,\" replied his wife, \"how can you be so tiresome! "
    "You must know that I am thinking of his marrying one of them.\"\n")


@pytest.fixture(scope="module")
def engines():
    return {d: Engine(kv_dtype=d) for d in KV_DTYPES}


def test_engine_kv_dtype_and_memory(engines):
    f32 = engines["f32"].model.cache
    a = engines["f32"].model.args
    for d, eng in engines.items():
        c = eng.model.cache
        assert c.dtype == d and c.k.dtype == {"f32": np.float32, "f16": np.float16, "int8": np.int8}[d]
    assert Engine().model.cache.dtype == "f16"                       # the default
    assert engines["f16"].model.cache.nbytes * 2 == f32.nbytes
    ratio = engines["int8"].model.cache.nbytes / f32.nbytes
    assert ratio == (a.head_dim + 4) / (4 * a.head_dim) and ratio <= 0.3  # 0.27 at head_dim 64


def test_perplexity_close_to_f32(engines):
    ids = engines["f32"].tokenizer.encode(TEXT, add_bos=False)
    assert len(ids) > 256   # more than one window of the model's 256 positions
    bos = engines["f32"].tokenizer.bos_id
    ppl = {d: math.exp(window_nll(e, ids, 256, bos)[0]) for d, e in engines.items()}
    assert abs(ppl["f16"] / ppl["f32"] - 1) <= 1e-3, ppl
    assert abs(ppl["int8"] / ppl["f32"] - 1) <= 1e-2, ppl
    assert ppl["int8"] != ppl["f32"]   # the int8 cache is really in use


def test_logits_close_to_f32(engines):
    ids = engines["f32"].tokenizer.encode(TEXT)[:200]
    want = engines["f32"].forward(ids)
    for d in ("f16", "int8"):
        got = engines[d].forward(ids)
        assert np.abs(got - want).max() <= 0.02 * np.abs(want).max(), d
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9, d


@pytest.mark.parametrize("dtype", ["f16", "int8"])
def test_decode_equals_prefill(dtype):
    """Decoding one token at a time stores exactly the cache rows (and int8 scales) a prefill
    stores, and gives the same logits up to the float head's summation order (the shipped model's
    tied f32 embedding runs through BLAS, whose GEMM and GEMV add in different orders)."""
    ids = Engine(kv_dtype=dtype).tokenizer.encode(TEXT)[:40]
    prefill, decode = Engine(kv_dtype=dtype).model, Engine(kv_dtype=dtype).model
    full = prefill.forward(ids)
    steps = np.stack([decode.forward([t], i)[0] for i, t in enumerate(ids)])
    for name, arr in vars(prefill.cache).items():
        if isinstance(arr, np.ndarray):
            rows = (slice(None),) * 2 + (slice(0, len(ids)),)
            np.testing.assert_array_equal(arr[rows], getattr(decode.cache, name)[rows], err_msg=name)
    np.testing.assert_allclose(steps, full, rtol=0, atol=1e-5 * np.abs(full).max())
    assert (steps.argmax(1) == full.argmax(1)).all()


def test_batch_uses_the_model_cache_dtype(engines):
    """The server's batched decode: int8 slot caches, and the same greedy tokens as the engine."""
    eng = engines["int8"]
    prompts = [eng.tokenizer.encode(p) for p in ("It is a truth", "My dear Mr. Bennet", "Netherfield")]
    want = [eng.generate(p, max_new_tokens=12, temperature=0, ignore_eos=True) for p in prompts]
    vocab = eng.model.args.vocab_size
    samplers = [Sampler(SamplingParams(temperature=0), vocab) for _ in prompts]
    assert batch_generate(eng.model, prompts, 12, samplers, max_batch=2) == want


def test_bad_kv_dtype_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown KV cache dtype 'bf16' \(expected one of f32, f16, int8\)"):
        Engine(kv_dtype="bf16")
    with pytest.raises(ValueError, match="unknown KV cache dtype"):
        KVCache(1, 1, 4, 8, "q8_0")
    r = subprocess.run([sys.executable, "-m", "engine.cli", "Hello", "-n", "2", "--kv-dtype", "q4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "error: unknown KV cache dtype 'q4' (expected one of f32, f16, int8)"
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    r = subprocess.run([sys.executable, "-m", "engine.ppl", str(f), "--kv-dtype", "int4"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown KV cache dtype 'int4'" in r.stderr


def test_serve_rejects_bad_kv_dtype(capsys):
    for mod in ("fastapi", "uvicorn", "prometheus_client"):  # the [serve] extra
        pytest.importorskip(mod)
    from engine.serve.server import main

    with pytest.raises(SystemExit) as e:
        main(["--kv-dtype", "f8"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--kv-dtype" in err and "'f8'" in err


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_cli_runs_with_each_kv_dtype(tmp_path, dtype):
    r = subprocess.run([sys.executable, "-m", "engine.cli", "It is a truth", "-n", "8", "--temp", "0",
                        "--kv-dtype", dtype], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("It is a truth") and len(r.stdout) > len("It is a truth\n")
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    r = subprocess.run([sys.executable, "-m", "engine.ppl", str(f), "--kv-dtype", dtype],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "perplexity" in r.stdout, r.stderr
