"""RoPE scaling (issue 16 item 1): every rope type transformers applies to Llama models, from
config.json (transformers-5 rope_parameters and legacy rope_scaling + top-level rope_theta) and
from GGUF metadata, against transformers float32 eager: logits on every prompt position and
greedy tokens through the KV cache (prefill once, then one token per step).

The reference model is loaded afresh for every reference computation: transformers' dynamic
RoPE keeps the largest sequence length a model object has seen (modeling_rope_utils.
dynamic_rope_update), so a logits call after generate() on the same object would use the
generate call's frequencies. The prompts (48 tokens) cross the original context (24, or
max_position_embeddings 32 for dynamic) where the type depends on it; the 12-token prompts stay
below it.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import checkpoints as C  # noqa: E402
import engine.convert as conv  # noqa: E402
from engine.formats import tpk  # noqa: E402
from test_convert import _ref_logits, check_logits, engine_greedy, engine_logits  # noqa: E402

GREEDY = 16
ORIG = 24
D = C.Dims(hidden=128, inter=192, heads=4, kv_heads=2, head_dim=64, vocab=301, eps=1e-6, max_position=256)
_rng = np.random.default_rng(7)
LONG_SHORT = {"short_factor": [float(x) for x in _rng.uniform(1.0, 1.5, D.head_dim // 2)],
              "long_factor": [float(x) for x in _rng.uniform(1.0, 6.0, D.head_dim // 2)]}

# name -> (rope_parameters (None: legacy form in `legacy`), extra top-level config keys, max_position)
TYPES = {
    "default": ({"rope_type": "default", "rope_theta": 10000.0}, {}, 256),
    "linear": ({"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, {}, 256),
    "dynamic": ({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0}, {}, 32),
    "yarn": ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
              "original_max_position_embeddings": ORIG}, {}, 256),
    "yarn-mscale": ({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "beta_fast": 16.0, "beta_slow": 2.0,
                     "mscale": 1.0, "mscale_all_dim": 0.5, "original_max_position_embeddings": ORIG}, {}, 256),
    "llama3": ({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": ORIG}, {}, 256),
    "longrope": ({"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": ORIG,
                  **LONG_SHORT}, {}, 256),
    # legacy config.json: rope_scaling with "type", top-level rope_theta, no rope_parameters
    "legacy-linear": (None, {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 50000.0}, 256),
    "legacy-dynamic": (None, {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 20000.0}, 32),
}


def build(tmp, name):
    rp, extra, mpe = TYPES[name]
    d = C.Dims(**{**D.__dict__, "max_position": mpe})
    sd = {k: v.astype(np.float16) for k, v in C.random_weights(d, 11, sub_norms=False).items()}
    cfg = C._config("llama", d)
    if rp is None:
        cfg.pop("rope_parameters", None)
    else:
        cfg["rope_parameters"] = rp
    cfg.update(extra)
    path = os.path.join(tmp, name)
    C._save_any(path, {k: torch.from_numpy(v) for k, v in sd.items()}, cfg)
    return C.Checkpoint(path, path, "LlamaForCausalLM", d, name)


def reference(ck, prompt):
    """(logits f32 [T, vocab], greedy tokens), each from a freshly loaded model."""
    ref = _ref_logits(ck.reference(), prompt)
    with torch.no_grad():
        out = ck.reference().generate(torch.tensor([prompt]), max_new_tokens=GREEDY, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)
    return ref, [int(i) for i in out[0, len(prompt):]]


def prompt_of(n, seed=3):
    return [int(i) for i in np.random.default_rng(seed).integers(3, D.vocab, n)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("rope"))
    cache = {}

    def get(name):
        if name not in cache:
            ck = build(tmp, name)
            out = os.path.join(tmp, name + ".tpk")
            assert conv.main([ck.path, "-o", out, "-q"]) == 0
            cache[name] = (ck, out)
        return cache[name]
    return get


@pytest.mark.parametrize("n", [48, 12])
@pytest.mark.parametrize("name", list(TYPES))
def test_rope_type_matches_transformers(built, name, n):
    if n == 12 and name not in ("dynamic", "longrope", "legacy-dynamic", "yarn"):
        pytest.skip("no sequence-length dependence: the 48-token case covers it")
    ck, out = built(name)
    prompt = prompt_of(n)
    ref, greedy = reference(ck, prompt)
    rel, agree = check_logits(engine_logits(out, prompt), ref)
    got = engine_greedy(out, prompt, GREEDY)
    print(f"rope {name} T={n}: max |logit diff| = {rel:.2e} x max |logit|, greedy match {got == greedy}")
    assert rel <= 1e-4, f"{rel:.2e}"
    assert got == greedy


def test_config_holds_resolved_parameters(built):
    c = tpk.read(built("yarn-mscale")[1]).config
    rs = c["rope_scaling"]
    assert rs["rope_type"] == "yarn" and rs["original_max_position_embeddings"] == ORIG
    assert rs["attention_factor"] == pytest.approx((0.1 * np.log(8) + 1) / (0.05 * np.log(8) + 1))
    assert (rs["beta_fast"], rs["beta_slow"]) == (16.0, 2.0)
    c = tpk.read(built("legacy-linear")[1]).config
    assert c["rope_theta"] == 50000.0 and c["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert "rope_scaling" not in tpk.read(built("default")[1]).config  # old files: absent = default


def test_check_config_rope_scaling():
    base = {"rope_type": "linear", "factor": 2.0}
    tpk.check_rope_scaling(None, 64)
    tpk.check_rope_scaling(base, 64)
    with pytest.raises(tpk.TpkError, match="unknown rope_scaling type 'ntk-by-parts'"):
        tpk.check_rope_scaling({"rope_type": "ntk-by-parts"}, 64)
    with pytest.raises(tpk.TpkError, match="'factor'"):
        tpk.check_rope_scaling({"rope_type": "linear", "factor": -1.0}, 64)
    with pytest.raises(tpk.TpkError, match="32 positive numbers"):
        tpk.check_rope_scaling({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0] * 32,
                                "original_max_position_embeddings": 4, "attention_factor": 1.0}, 64)
    with pytest.raises(tpk.TpkError, match="not an object"):
        tpk.check_rope_scaling("yarn", 64)


@pytest.mark.parametrize("name", ["linear", "llama3", "yarn"])
def test_gguf_round_trip(built, tmp_path, name):
    """GGUF as convert_hf_to_gguf.py writes these configs: linear / yarn as rope.scaling keys,
    llama3 as a rope_freqs tensor (llama.cpp freq_factors; the engine type freq_factors)."""
    pytest.importorskip("gguf")
    ck, _ = built(name)
    gg, out = str(tmp_path / "m.gguf"), str(tmp_path / "m.tpk")
    C.write_gguf_llama(ck, gg, rope=TYPES[name][0])
    assert conv.main([gg, "-o", out, "-q"]) == 0
    rs = tpk.read(out).config["rope_scaling"]
    assert rs["rope_type"] == {"llama3": "freq_factors"}.get(name, name)
    prompt = prompt_of(48)
    ref, greedy = reference(ck, prompt)
    rel, _ = check_logits(engine_logits(out, prompt), ref)
    got = engine_greedy(out, prompt, GREEDY)
    print(f"gguf rope {name}: max |logit diff| = {rel:.2e} x max |logit|, greedy match {got == greedy}")
    assert rel <= 1e-3 and got == greedy


@pytest.mark.parametrize("name", ["dynamic", "longrope"])
def test_batch_and_prefix_reuse_follow_the_sequence_length(built, name):
    """Batch (prefill split in chunks of 5, sequences of different lengths side by side) and
    Engine.generate (twice: no prefix reuse across lengths) give engine_greedy's tokens."""
    from engine.runtime import batch as B
    from engine.runtime.generate import Engine
    from engine.runtime.model import Model
    from engine.runtime.sampling import Sampler, SamplingParams

    ck, out = built(name)
    prompts = [prompt_of(48), prompt_of(12, seed=4), prompt_of(30, seed=5), prompt_of(44, seed=6)]
    want = [engine_greedy(out, p, GREEDY) for p in prompts]
    model = Model(tpk.read(out), ctx=128, kv_dtype="f32")
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0, frequency_penalty=0.0)  # as transformers
    batch = B.Batch(model, max_batch=3, prefill_chunk=5)
    seqs = []
    for p in prompts:  # join while others decode: their prompts run in chunks of 5
        seqs.append(batch.submit(B.Sequence(p, GREEDY, Sampler(greedy, D.vocab, seed=0))))
        for _ in range(2):
            batch.step()
    batch.run_until_done()
    assert [s.generated for s in seqs] == want
    eng = Engine(out, ctx=128, kv_dtype="f32")
    for p, w in [(prompts[2], want[2]), (prompts[2][:20], engine_greedy(out, prompts[2][:20], GREEDY)),
                 (prompts[2], want[2])]:
        assert list(eng.generate_ids(p, GREEDY, Sampler(greedy, D.vocab, seed=0))) == w
