"""Forward pass: decode == full forward, a plain numpy reference of each graph, transformers'
BitNet / Llama-bitlinear / Llama modules on the same weights, the KV cache limit, Engine API."""
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitLinear uses torch.compile
sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import dequantized, write_tiny  # noqa: E402

from engine import ContextError, Engine  # noqa: E402
from engine.formats import tpk  # noqa: E402
from engine.formats.tpk import head_matrix  # noqa: E402
from engine.runtime import model as model_module  # noqa: E402
from engine.runtime.model import Model, rope_tables  # noqa: E402

# Odd sizes: vocab not a multiple of 64, head_dim 16/32/64, GQA ratios 1/2/3, tied/untied heads.
CASES = {
    "bitnet-t2-tied": dict(),
    "bitnet-t1-untied-int8head-gqa3": dict(weight_format="t1", tie=False, lm_head_format="int8",
                                           heads=6, kv_heads=2, head_dim=16, hidden=96),
    "bitnet-hd32-mha-f32embed": dict(heads=2, kv_heads=2, head_dim=32, embed_dtype=np.float32),
    "llama-div-hd32-qd-ne-hidden": dict(arch="llama", heads=4, kv_heads=2, head_dim=32),
    "llama-div-projnorm-untied": dict(arch="llama", proj_norm_eps=1e-6, tie=False),
    "f16-llama-hd64-gqa2": dict(arch="llama", weight_format="f16", heads=2, kv_heads=1, head_dim=64),
    "bitnet-tl2-untied-gqa2": dict(weight_format="tl2", tie=False, heads=4, kv_heads=2, head_dim=16,
                                   hidden=64),
    "bitnet-t2-untied-q4head-hidden160": dict(tie=False, lm_head_format="q4", hidden=160, heads=10,
                                              kv_heads=5, head_dim=16),
}
PROMPT = [0, 17, 120, 5, 99, 250, 31, 64, 64, 7, 200, 150, 3, 88, 12, 45, 290, 33, 71]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {name: str(write_tiny(d / f"{name}.tpk", seed=i, **kw)) for i, (name, kw) in enumerate(CASES.items())}


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("case", list(CASES))
def test_decode_equals_full_forward(tiny, case):
    m = Model(tiny[case], ctx=64)
    full = m.forward(PROMPT)
    steps = np.stack([m.step(t, p).copy() for p, t in enumerate(PROMPT)])
    assert full.shape == (len(PROMPT), m.args.vocab_size) and full.dtype == np.float32
    assert rel(steps, full) <= 1e-3
    # prefill a prefix, then the rest as a second batch; last_only gives the final row
    m.forward(PROMPT[:7])
    assert rel(m.forward(PROMPT[7:], 7), full[7:]) <= 1e-3
    assert rel(m.forward(PROMPT, 0, last_only=True), full[-1:]) <= 1e-3


def test_tl2_and_t1_logits_equal_t2(tmp_path):
    """The same ternary weights packed as t2, t1 or tl2: identical int32 sums, so identical
    logits, for prefill (GEMM, few-token) and decode steps (GEMV)."""
    kw = dict(tie=False, heads=4, kv_heads=2, head_dim=16, hidden=64)
    models = {f: Model(str(write_tiny(tmp_path / f"{f}.tpk", seed=5, weight_format=f, **kw)), ctx=64)
              for f in ("t2", "t1", "tl2")}
    want = models["t2"].forward(PROMPT)
    for f in ("t1", "tl2"):
        assert np.array_equal(models[f].forward(PROMPT), want), f
        assert np.array_equal(models[f].forward(PROMPT[:3]), want[:3]), f
        assert np.array_equal(models[f].step(PROMPT[3], 3), want[3]), f


def test_chunked_prefill(tiny, monkeypatch):
    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 4)
    m = Model(tiny["bitnet-t2-tied"], ctx=64)
    chunked = m.forward(PROMPT)
    monkeypatch.setattr(model_module, "PREFILL_CHUNK", 256)
    assert rel(chunked, Model(tiny["bitnet-t2-tied"], ctx=64).forward(PROMPT)) <= 1e-3


# -- a plain numpy reference of the graph (no cache, no kernels but unpack) -------------------
def reference_logits(path, ids):
    tp = tpk.read(path)
    c, t = tp.config, tp.tensors
    f32 = np.float32
    T, D, Hq, Hkv = len(ids), c["head_dim"], c["num_heads"], c["num_kv_heads"]

    def rms(x, w, eps):
        return (x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w).astype(f32)

    def int8_tokens_matmul(x, w):
        """x quantized per token (absmax int8, as the kernels take it) @ w.T."""
        s = f32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), f32(1e-5))
        q = np.clip(np.rint(x * s), -128, 127)
        return (q @ w.astype(np.float64).T / s).astype(f32)

    def linear(name, x):
        w = dequantized(tp, name)
        if c["weight_format"] == "f16":
            return (x.astype(np.float64) @ w.T).astype(f32)
        if c.get("proj_norm_eps") is not None:
            x = rms(x, t[name + ".in_norm"], c["proj_norm_eps"])
        return int8_tokens_matmul(x, w)

    inv = 1.0 / c["rope_theta"] ** (np.arange(0, D, 2) / D)
    ang = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]  # (T, 1, D/2)

    def rope(x):
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    x = t["embed"][ids].astype(f32)
    eps = c["rms_norm_eps"]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(c["num_layers"]):
        p = f"layers.{i}."
        h = rms(x, t[p + "attn_norm"], eps)
        q = rope(linear(p + "attn.q", h).reshape(T, Hq, D))
        k = rope(linear(p + "attn.k", h).reshape(T, Hkv, D))
        v = linear(p + "attn.v", h).reshape(T, Hkv, D)
        att = np.zeros((T, Hq, D))
        for hh in range(Hq):
            kv = hh // (Hq // Hkv)
            sc = q[:, hh] @ k[:, kv].T / np.sqrt(D) + mask
            pr = np.exp(sc - sc.max(-1, keepdims=True))
            att[:, hh] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kv]
        a = att.reshape(T, Hq * D).astype(f32)
        if c["sub_norms"]:
            a = rms(a, t[p + "attn.sub_norm"], eps)
        x = x + linear(p + "attn.o", a)
        h = rms(x, t[p + "ffn_norm"], eps)
        g, u = linear(p + "mlp.gate", h), linear(p + "mlp.up", h)
        act = np.maximum(g, 0) ** 2 if c["hidden_act"] == "relu2" else g / (1 + np.exp(-g))
        m = (act * u).astype(f32)
        if c["sub_norms"]:
            m = rms(m, t[p + "mlp.sub_norm"], eps)
        x = x + linear(p + "mlp.down", m)
    x = rms(x, t["norm"], eps)
    head = head_matrix(t).astype(np.float64)
    if "lm_head.sub" in t:  # the q4 head takes per-token int8 activations, as the ternary linears
        return int8_tokens_matmul(x, head)
    return (x @ head.T).astype(f32)


def agree(got, ref):
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    return top1, rel(got, ref)


@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_reference(tiny, case):
    got = Model(tiny[case], ctx=64, kv_dtype="f32").forward(PROMPT)
    top1, err = agree(got, reference_logits(tiny[case], PROMPT))
    assert top1 >= 0.9 and err <= 1e-2, (top1, err)


# -- transformers on the same weights ------------------------------------------------------
def hf_model(path):
    """transformers BitNetForCausalLM / LlamaForCausalLM holding the .tpk's weights, with
    transformers' own bitnet linears (integrations/bitnet.py AutoBitLinear / BitLinear)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.integrations.bitnet import VALUES_PER_ITEM, pack_weights, replace_with_bitnet_linear

    tp = tpk.read(path)
    c, t = tp.config, tp.tensors
    common = dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                  intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_layers"],
                  num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
                  head_dim=c["head_dim"], max_position_embeddings=c["max_position"],
                  rms_norm_eps=c["rms_norm_eps"], hidden_act=c["hidden_act"],
                  tie_word_embeddings=c["tie_word_embeddings"] and "lm_head.weight" not in t,
                  rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if c["architecture"] == "bitnet":
        m = transformers.BitNetForCausalLM(transformers.BitNetConfig(**common))
        qc = transformers.BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="offline")
    else:
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
        qc = None if c["weight_format"] == "f16" else transformers.BitNetQuantConfig(
            linear_class="bitlinear", use_rms_norm=c.get("proj_norm_eps") is not None,
            rms_norm_eps=c.get("proj_norm_eps") or 1e-6)
    if qc is not None:
        replace_with_bitnet_linear(m, modules_to_not_convert=["lm_head"], quantization_config=qc)
    m = m.to(torch.float32).eval()
    f = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731  (a writable copy)
    sd = {"model.embed_tokens.weight": f(t["embed"]), "model.norm.weight": f(t["norm"])}
    hf_names = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
                "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
                "mlp.down": "mlp.down_proj"}
    for i in range(c["num_layers"]):
        p, hp = f"layers.{i}.", f"model.layers.{i}."
        sd[hp + "input_layernorm.weight"] = f(t[p + "attn_norm"])
        sd[hp + "post_attention_layernorm.weight"] = f(t[p + "ffn_norm"])
        if c["sub_norms"]:
            sd[hp + "self_attn.attn_sub_norm.weight"] = f(t[p + "attn.sub_norm"])
            sd[hp + "mlp.ffn_sub_norm.weight"] = f(t[p + "mlp.sub_norm"])
        for ours, theirs in hf_names.items():
            name = p + ours
            if c["weight_format"] == "f16":
                sd[hp + theirs + ".weight"] = f(t[name + ".weight"])
                continue
            w = dequantized(tp, name)
            s = float(t[name + ".scale"][0])
            tern = np.rint(w / s if c["scale_mode"] == "mul" else w * s)
            if c["scale_mode"] == "mul":      # AutoBitLinear: float ternary weight, output * scale
                sd[hp + theirs + ".weight"] = f(tern)
            else:                             # BitLinear: HF-packed uint8 [out/4, in], output / scale
                assert tern.shape[0] % VALUES_PER_ITEM == 0
                sd[hp + theirs + ".weight"] = pack_weights(torch.from_numpy(tern.astype(np.int8)))
            sd[hp + theirs + ".weight_scale"] = f([s])
            if c.get("proj_norm_eps") is not None:
                sd[hp + theirs + ".rms_norm.weight"] = f(t[name + ".in_norm"])
    if "lm_head.weight" in t:
        sd["lm_head.weight"] = f(head_matrix(t))
    missing, unexpected = m.load_state_dict(sd, strict=False, assign=True)  # rms_norm is on meta
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    if common["tie_word_embeddings"]:
        m.lm_head.weight = m.model.embed_tokens.weight  # assign=True replaced the tied parameter
    return m


@pytest.mark.parametrize("case", ["bitnet-t2-tied", "bitnet-t1-untied-int8head-gqa3",
                                  "bitnet-t2-untied-q4head-hidden160",
                                  "llama-div-projnorm-untied", "f16-llama-hd64-gqa2"])
def test_matches_transformers(tiny, case):
    torch = pytest.importorskip("torch")
    m = hf_model(tiny[case])
    with torch.no_grad():
        ref = m(torch.tensor([PROMPT])).logits[0].float().numpy()
    got = Model(tiny[case], ctx=64, kv_dtype="f32").forward(PROMPT)
    top1, err = agree(got, ref)
    assert top1 >= 0.9 and err <= 1e-2, (top1, err)


def test_rope_tables_match_transformers():
    torch = pytest.importorskip("torch")
    from transformers import BitNetConfig
    from transformers.models.bitnet.modeling_bitnet import BitNetRotaryEmbedding

    cfg = BitNetConfig(hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cos_t, sin_t = BitNetRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), torch.arange(4096)[None])
    cos, sin = rope_tables(128, 500000.0, 4096)
    assert np.abs(cos - cos_t[0, :, :64].numpy()).max() <= 2e-7   # float32 angle identical
    assert np.abs(sin - sin_t[0, :, :64].numpy()).max() <= 2e-7


# -- limits and errors -------------------------------------------------------------------------
def test_context_limit(tiny):
    m = Model(tiny["bitnet-t2-tied"], ctx=8)
    m.forward(PROMPT[:8])
    with pytest.raises(ContextError, match="context of 8"):
        m.forward(PROMPT[:9])
    with pytest.raises(ContextError):
        m.step(1, 8)
    eng = Engine(tiny["bitnet-t2-tied"], ctx=16)
    with pytest.raises(ContextError, match=r"prompt \(10 tokens\) \+ 7 new tokens = 17 exceeds the context of 16"):
        eng.generate(PROMPT[:10], max_new_tokens=7)
    assert len(eng.generate(PROMPT[:10], max_new_tokens=6, temperature=0, ignore_eos=True)) == 6


def test_bad_token_ids(tiny):
    m = Model(tiny["bitnet-t2-tied"], ctx=16)
    with pytest.raises(ValueError, match="token id"):
        m.forward([1, m.args.vocab_size])
    with pytest.raises(ValueError):
        m.step(-1, 0)


# -- Engine -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def eng(tiny):
    return Engine(tiny["bitnet-t2-tied"], ctx=96, kv_dtype="f32")


def test_engine_forward_and_ids(eng):
    logits = eng.forward(PROMPT)
    assert logits.shape == (len(PROMPT), 301) and logits.dtype == np.float32
    out = eng.generate(PROMPT, max_new_tokens=8, temperature=0, ignore_eos=True,
                       repetition_penalty=1.0, frequency_penalty=0.0)  # plain argmax
    assert isinstance(out, list) and len(out) == 8
    # greedy ids == argmax of a full forward over prompt + generated, position by position
    full = eng.forward(PROMPT + out)
    assert list(full[len(PROMPT) - 1:-1].argmax(-1)) == out


def test_engine_text_stream_seed(eng):
    kw = dict(max_new_tokens=24, temperature=1.0, seed=5, ignore_eos=True)
    a = eng.generate("Once upon a time", **kw)
    assert isinstance(a, str) and a
    assert "".join(eng.stream("Once upon a time", **kw)) == a
    assert eng.generate("Once upon a time", **kw) == a           # seeded: reproducible
    assert eng.generate("The cat", **kw) != eng.generate("The cat", **dict(kw, seed=6))
    assert eng.stats.generated_tokens == 24 and eng.stats.prompt_tokens > 0


def test_engine_prefix_reuse_matches_fresh(tiny, eng):
    kw = dict(max_new_tokens=10, temperature=0, ignore_eos=True)
    eng.generate(PROMPT[:12], **kw)
    reused = eng.generate(PROMPT, **kw)                  # the 12 cached positions are reused
    assert eng.stats.prompt_tokens == len(PROMPT) - 12
    assert reused == Engine(tiny["bitnet-t2-tied"], ctx=96).generate(PROMPT, **kw)


def test_engine_stop_strings_and_eos(eng):
    kw = dict(max_new_tokens=30, temperature=0, ignore_eos=True)
    text = eng.generate("Once upon a time", **kw)
    stop = text[5:8]
    cut = eng.generate("Once upon a time", stop=[stop], **kw)
    assert cut == text[:text.index(stop)]
    ids = eng.generate(PROMPT, **kw)
    eos = ids[3]  # make the 4th greedy token a stop id
    eng.tokenizer.eos_id, saved = eos, eng.tokenizer.eos_id
    try:
        assert eng.generate(PROMPT, max_new_tokens=30, temperature=0) == ids[:ids.index(eos)]
    finally:
        eng.tokenizer.eos_id = saved


def test_chat_templates(tiny, tmp_path):
    eng = Engine(tiny["bitnet-t2-tied"], ctx=96)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert eng.chat_prompt(msgs) == "System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: "
    ids = eng.chat_ids(msgs)
    assert ids[0] == eng.tokenizer.bos_id and ids.count(eng.tokenizer.eot_id) == 2
    assert isinstance(eng.chat(msgs, max_new_tokens=5, temperature=0), str)
    jinja = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|eot_id|>"
             "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    p = write_tiny(tmp_path / "chat.tpk", chat_template=jinja)
    eng = Engine(p, ctx=96)
    assert eng.chat_prompt(msgs) == "<|begin_of_text|><system>Be brief.<|eot_id|><user>Hi<|eot_id|><assistant>"
    ids = eng.chat_ids(msgs)
    assert ids.count(eng.tokenizer.bos_id) == 1 and ids[0] == eng.tokenizer.bos_id


def test_default_model_missing_is_clear(monkeypatch, tmp_path):
    import engine

    monkeypatch.setattr(engine.runtime.generate, "DEFAULT_MODEL", tmp_path / "default.tpk")
    with pytest.raises(FileNotFoundError, match="default model"):
        Engine()
