"""Tiny .tpk models and tokenizers built in the test itself (random weights, no downloads).

    path = write_tiny(tmp_path / "m.tpk", arch="bitnet", vocab=301, head_dim=16, kv_heads=2)

Weights: random ternary {-1, 0, 1} with a per-tensor scale ~ 1.5 / sqrt(fan_in) so that
attention is peaked (FORMATS.md: N(0, 0.02) weights hide RoPE / KV-cache / GQA bugs).
Tokenizers: a byte-level BPE tokenizer.json (Llama-3 style) and a SentencePiece BPE model
with byte fallback, both trained here on a few sentences.
"""
from __future__ import annotations

import functools
import io

import numpy as np

from engine import quant as q4

CORPUS = [
    "Once upon a time there was a little cat who lived in a quiet house.",
    "The cat liked to sleep in the sun and to watch the birds in the garden.",
    "One day the cat met a dog, and they became the best of friends.",
    "They played together every day until the sun went down.",
    "Numbers like 12345 and 2024 appear in text, as do words like über and café.",
    "The quick brown fox jumps over the lazy dog. The end.",
] * 4

HF_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


@functools.lru_cache(maxsize=None)
def hf_tokenizer_json(vocab_size: int = 300) -> bytes:
    """A byte-level BPE tokenizer.json: 256 byte symbols + merges + 3 special tokens (ids 0-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=HF_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str().encode()


@functools.lru_cache(maxsize=None)
def sp_model(vocab_size: int = 320, add_dummy_prefix: bool = True) -> bytes:
    """A SentencePiece BPE .model with byte fallback: <unk> 0, <s> 1, </s> 2, <0x00>.. 3-258."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=add_dummy_prefix,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    return out.getvalue()


def tokenizer_section(kind: str, data: bytes, chat_template=None) -> dict:
    if kind == "hf":
        return {"type": "hf", "bos_id": 0, "eos_id": 1, "eot_id": 2, "add_bos": True,
                "chat_template": chat_template}
    return {"type": "sentencepiece", "bos_id": 1, "eos_id": 2, "eot_id": None, "add_bos": True,
            "chat_template": chat_template}


def tiny_config(arch="bitnet", vocab=301, hidden=64, inter=96, layers=2, heads=4, kv_heads=2,
                head_dim=16, weight_format="t2", lm_head_format="f16", tie=True, proj_norm_eps=None,
                max_position=128, rope_theta=10000.0, tokenizer=None) -> dict:
    bitnet = arch == "bitnet"
    return {
        "format_version": 1, "architecture": arch, "hidden_size": hidden, "intermediate_size": inter,
        "num_layers": layers, "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": vocab, "max_position": max_position, "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta, "rope_style": "neox", "hidden_act": "relu2" if bitnet else "silu",
        "sub_norms": bitnet, "tie_word_embeddings": tie, "weight_format": weight_format,
        "lm_head_format": lm_head_format, "scale_mode": "mul" if bitnet else "div",
        "proj_norm_eps": proj_norm_eps,
        "tokenizer": tokenizer or tokenizer_section("hf", b""),
    }


def random_tensors(config: dict, tokenizer_bytes: bytes, seed: int = 0, embed_dtype=np.float16) -> dict:
    """Tensors for config (docs/CONTRACTS.md names); dequantized() gives a linear's float weight."""
    from engine import kernels
    from engine.formats.tpk import linear_shapes

    rng = np.random.default_rng(seed)
    c = config
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    norm = lambda n: (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    t = {"embed": rng.standard_normal((vocab, h)).astype(embed_dtype), "norm": norm(h)}
    for i in range(c["num_layers"]):
        t[f"layers.{i}.attn_norm"], t[f"layers.{i}.ffn_norm"] = norm(h), norm(h)
        if c["sub_norms"]:
            t[f"layers.{i}.attn.sub_norm"], t[f"layers.{i}.mlp.sub_norm"] = norm(h), norm(inter)
    for prefix, (n, k) in linear_shapes(c).items():
        gain = 1.5 / np.sqrt(k)
        if c["weight_format"] == "f16":
            t[prefix + ".weight"] = (rng.standard_normal((n, k)) * gain).astype(np.float16)
        else:
            w = rng.choice(np.array([-1, 0, 1], np.int8), size=(n, k))
            t[prefix + ".weight"] = kernels.pack(c["weight_format"], w)
            scale = gain * rng.uniform(0.8, 1.25)
            t[prefix + ".scale"] = np.array([scale if c["scale_mode"] == "mul" else 1 / scale], np.float32)
        if c.get("proj_norm_eps") is not None:
            t[prefix + ".in_norm"] = norm(k)
    head = (rng.standard_normal((vocab, h)) * 3 / np.sqrt(h)).astype(np.float32)
    if c["lm_head_format"] == "int8":
        row_scale = (np.abs(head).max(axis=1) / 127).astype(np.float32)
        t["lm_head.weight"] = np.round(head / row_scale[:, None]).astype(np.int8)
        t["lm_head.scale"] = row_scale
    elif c["lm_head_format"] == "q4":
        t["lm_head.weight"], t["lm_head.sub"], t["lm_head.scale"] = q4.quantize(head)
    elif not (c["tie_word_embeddings"] and t["embed"].dtype == np.float16):
        t["lm_head.weight"] = (t["embed"] if c["tie_word_embeddings"] else head).astype(np.float16)
    t["tokenizer"] = np.frombuffer(tokenizer_bytes, np.uint8)
    return t


def write_tiny(path, tokenizer: str = "hf", seed: int = 0, embed_dtype=np.float16,
               chat_template=None, **config_kw):
    """Write a tiny random .tpk; returns path. config_kw: see tiny_config."""
    from engine.formats import tpk

    data = hf_tokenizer_json() if tokenizer == "hf" else sp_model()
    config_kw.setdefault("vocab", 301 if tokenizer == "hf" else 333)  # >= the tokenizer's vocab
    config = tiny_config(tokenizer=tokenizer_section(tokenizer, data, chat_template), **config_kw)
    tpk.write(path, config, random_tensors(config, data, seed, embed_dtype))
    return path


def dequantized(tpk_obj, name: str) -> np.ndarray:
    """Float32 [N, K] weight of linear `name` (e.g. 'layers.0.attn.q') as the graph uses it:
    ternary * scale ("mul") or ternary / scale ("div"); f16 weights as float32."""
    from engine import kernels
    from engine.formats.tpk import linear_shapes

    c, t = tpk_obj.config, tpk_obj.tensors
    if c["weight_format"] == "f16":
        return t[name + ".weight"].astype(np.float32)
    n, k = linear_shapes(c)[name]
    w = kernels.unpack(c["weight_format"], np.ascontiguousarray(t[name + ".weight"]), k).astype(np.float32)
    s = float(t[name + ".scale"][0])
    return w * s if c["scale_mode"] == "mul" else w / s
