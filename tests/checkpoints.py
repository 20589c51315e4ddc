"""Tiny Hugging Face checkpoints of every kind in FORMATS.md, built inside the tests (no hub).

Each builder writes a checkpoint directory and returns a Checkpoint whose reference() loads the
model with transformers (float32, eager attention) -- the ground truth the engine is compared
with. Weights are random, ~1/sqrt(fan_in) with q/k scaled up so attention is peaked; sizes are
odd on purpose (vocab not a multiple of 64, head_dim 32 and 64, GQA 1/2/3, tied and untied).

Traps handled here (see FORMATS.md): autobitlinear + offline keeps bf16 embeddings and norms in
bf16 under dtype=float32, so offline checkpoints store them as f32; embeddings are rounded to
fp16 values so that the engine's fp16 embedding is exact.
"""
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

# Tiny models: one thread is fastest, and oversubscribing a shared 2-core machine is 100x slower.
torch.set_num_threads(1)

SENTENCES = [
    "Once upon a time there was a little robot who loved to count the stars.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Ternary weights are minus one, zero or plus one times a single scale.",
    "In the morning the baker made bread; in the evening she sold it all.",
    "def add(a, b):\n    return a + b  # numbers 12345 and 678\n",
    "Ünïcödé works too: naïve café, 東京, emoji 🙂.",
]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
SPECIALS_IDS = (0, 1, 2)  # the BPE trainer puts the special tokens first
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}<|eot_id|>"
                 "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}")


def make_hf_tokenizer(vocab_size=290):
    """A byte-level BPE tokenizer.json trained on SENTENCES (Llama-3 style specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 4, trainer)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIALS[0]} $A", special_tokens=[(SPECIALS[0], bos)])
    return tok


def make_sentencepiece_model(tmp_dir, vocab_size=340):
    """A Llama-style SentencePiece BPE .model (identity normalizer, whitespace kept, digits split,
    byte fallback) trained on SENTENCES; returns its bytes."""
    import sentencepiece as spm

    text = os.path.join(tmp_dir, "spm_train.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(SENTENCES * 8))
    prefix = os.path.join(tmp_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
        hard_vocab_limit=False, character_coverage=0.98, bos_id=1, eos_id=2, unk_id=0, pad_id=-1,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        minloglevel=2, num_threads=1)
    with open(prefix + ".model", "rb") as f:
        return f.read()


@dataclass
class Dims:
    hidden: int = 128
    inter: int = 320
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 32
    vocab: int = 331
    tied: bool = False
    max_position: int = 256
    eps: float = 1e-5
    theta: float = 10000.0


@dataclass
class Checkpoint:
    path: str                     # the directory ternary-convert reads
    ref_path: str                 # the directory transformers loads for reference logits
    ref_class: str                # "BitNetForCausalLM" | "LlamaForCausalLM"
    dims: Dims
    kind: str
    ternary: dict = field(default_factory=dict)  # hf linear name -> (int8 q, scale, mode) when known

    def reference(self):
        import transformers

        cls = getattr(transformers, self.ref_class)
        model = cls.from_pretrained(self.ref_path, dtype=torch.float32, attn_implementation="eager")
        return model.eval()


def _rng(seed):
    return np.random.default_rng(seed)


def _linear_shapes(d):
    qd, kvd = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return {"self_attn.q_proj": (qd, d.hidden), "self_attn.k_proj": (kvd, d.hidden),
            "self_attn.v_proj": (kvd, d.hidden), "self_attn.o_proj": (d.hidden, qd),
            "mlp.gate_proj": (d.inter, d.hidden), "mlp.up_proj": (d.inter, d.hidden),
            "mlp.down_proj": (d.hidden, d.inter)}


def random_weights(d, seed, sub_norms):
    """float32 numpy state dict with HF names (BitNet sub-norm names when sub_norms)."""
    rng = _rng(seed)
    sd = {}
    # fp16-exact embeddings: the engine stores embed as fp16
    sd["model.embed_tokens.weight"] = rng.standard_normal((d.vocab, d.hidden)).astype(np.float16).astype(np.float32)
    for i in range(d.layers):
        p = f"model.layers.{i}."
        for name, (n, k) in _linear_shapes(d).items():
            gain = 2.5 if name in ("self_attn.q_proj", "self_attn.k_proj") else 1.0
            sd[p + name + ".weight"] = (rng.standard_normal((n, k)) * gain / np.sqrt(k)).astype(np.float32)
        for name, size in (("input_layernorm", d.hidden), ("post_attention_layernorm", d.hidden)):
            sd[p + name + ".weight"] = (1 + 0.2 * rng.standard_normal(size)).astype(np.float32)
        if sub_norms:
            sd[p + "self_attn.attn_sub_norm.weight"] = (1 + 0.2 * rng.standard_normal(d.hidden)).astype(np.float32)
            sd[p + "mlp.ffn_sub_norm.weight"] = (1 + 0.2 * rng.standard_normal(d.inter)).astype(np.float32)
    sd["model.norm.weight"] = (1 + 0.2 * rng.standard_normal(d.hidden)).astype(np.float32)
    if not d.tied:
        sd["lm_head.weight"] = (rng.standard_normal((d.vocab, d.hidden)) / np.sqrt(d.hidden) * 4).astype(
            np.float16).astype(np.float32)
    return sd


def absmean_quant(w):
    """transformers WeightQuant (integrations/bitnet.py): -> (int8 q, float32 1/s)."""
    t = torch.from_numpy(w).float()
    s = 1.0 / t.abs().mean().clamp(min=1e-5)
    q = (t * s).round().clamp(-1, 1)
    return q.to(torch.int8).numpy(), np.float32((1.0 / s).item())


def absmedian_quant(w):
    """Scale = the lower median of |W| (torch.median), as the converter's --scale absmedian."""
    t = torch.from_numpy(w).float()
    s = 1.0 / t.abs().flatten().median().clamp(min=1e-5)
    q = (t * s).round().clamp(-1, 1)
    return q.to(torch.int8).numpy(), np.float32((1.0 / s).item())


def hf_pack(q):
    """transformers' own packer (integrations/bitnet.py pack_weights): int8 [N, K] -> U8 [N/4, K]."""
    from transformers.integrations.bitnet import pack_weights

    return pack_weights(torch.from_numpy(q.astype(np.int8)).clone()).numpy()


def _config(model_type, d, **extra):
    import transformers

    cls = transformers.BitNetConfig if model_type == "bitnet" else transformers.LlamaConfig
    kw = dict(vocab_size=d.vocab, hidden_size=d.hidden, intermediate_size=d.inter,
              num_hidden_layers=d.layers, num_attention_heads=d.heads, num_key_value_heads=d.kv_heads,
              max_position_embeddings=d.max_position, rms_norm_eps=d.eps, tie_word_embeddings=d.tied,
              rope_parameters={"rope_type": "default", "rope_theta": d.theta},
              bos_token_id=SPECIALS_IDS[0], eos_token_id=SPECIALS_IDS[1])
    if model_type == "llama":
        kw["head_dim"] = d.head_dim
    elif d.hidden != d.heads * d.head_dim:
        raise ValueError("BitNetConfig has no head_dim: hidden must be heads * head_dim")
    cfg = cls(**kw).to_dict()
    cfg.update(extra)
    return cfg


def _ternary_state(sd, d, quant, pack, scale_dtype, mode):
    """Replace every linear weight by packed ternary + weight_scale; returns (sd, {name: (q, s)})."""
    out, tern = {}, {}
    for k, v in sd.items():
        base = k[:-len(".weight")]
        if any(base.endswith(n) for n in _linear_shapes(d)):
            q, s = quant(v)
            tern[base] = (q, s)
            stored = s if mode == "mul" else np.float32(1.0) / s
            out[k] = pack(q)
            out[base + ".weight_scale"] = np.array([stored], dtype=np.float32).astype(scale_dtype)
        else:
            out[k] = v
    return out, tern


def _bf16(a):
    """float32 numpy -> bf16 torch tensor (round to nearest even)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16)


def _write_tokenizer(path, tokenizer, tmp_dir):
    if tokenizer == "hf":
        tok = make_hf_tokenizer()
        tok.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "chat_template": CHAT_TEMPLATE}, f)
    elif tokenizer == "sentencepiece":
        with open(os.path.join(path, "tokenizer.model"), "wb") as f:
            f.write(make_sentencepiece_model(tmp_dir or path))


# ---------------------------------------------------------------------------------------------
# the kinds


def bitnet_offline(tmp, d, seed=1, shard_bytes=None, use_rms_norm=False, embed_f32=False, scale_0d=False,
                   legacy_config=False, lm_head_copy=False, bf16_norms=False):
    """(1) transformers BitNet, autobitlinear offline: packed U8 + bf16 weight_scale; f32 embeddings/norms.
    Variants as real files have them: embed_f32: float32 N(0, 1) embeddings that fp16 cannot
    hold exactly; scale_0d: weight_scale as a 0-d tensor; legacy_config: top-level rope_theta and
    torch_dtype, no rope_parameters, no rms_norm_eps, a head_dim key; lm_head_copy: a saved
    lm_head.weight next to the tied embedding; bf16_norms: every RMSNorm weight stored bf16
    (transformers 5.25 keeps them bf16 under dtype=float32 and multiplies in float32)."""
    sd = random_weights(d, seed, sub_norms=True)
    if embed_f32:
        sd["model.embed_tokens.weight"] = _rng(seed + 200).standard_normal((d.vocab, d.hidden)).astype(np.float32)
    if lm_head_copy:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
    sd, tern = _ternary_state(sd, d, absmean_quant, hf_pack, np.float32, "mul")
    qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    if use_rms_norm:
        qc.update(use_rms_norm=True, rms_norm_eps=1e-6)
        rng = _rng(seed + 100)
        for base in tern:
            k = _linear_shapes(d)[base.split(".", 3)[3]][1]
            sd[base + ".rms_norm.weight"] = (1 + 0.2 * rng.standard_normal(k)).astype(np.float32)
    tensors = {}
    for k, v in sd.items():  # weight_scale as bf16 like the released checkpoints
        tensors[k] = _bf16(v) if k.endswith("weight_scale") else torch.from_numpy(np.ascontiguousarray(v))
        if bf16_norms and "norm" in k and k.endswith(".weight"):
            tensors[k] = _bf16(v)
    # what the model computes with: the scale rounded to bf16
    tern = {b: (q, np.float32(tensors[b + ".weight_scale"].float().item()), "mul") for b, (q, s) in tern.items()}
    cfg = _config("bitnet", d, quantization_config=qc)
    if legacy_config:
        cfg.pop("rope_parameters", None)
        cfg.pop("rms_norm_eps", None)
        cfg.update(rope_theta=d.theta, torch_dtype="bfloat16", head_dim=d.head_dim)
        cfg.pop("dtype", None)
    path = os.path.join(tmp, "bitnet_offline")
    _save_any(path, tensors, cfg, shard_bytes=shard_bytes)
    if not scale_0d:
        return Checkpoint(path, path, "BitNetForCausalLM", d, "bitnet-offline", tern)
    # transformers loads only [1]-shaped scales: it gets `path`, the converter the 0-d copy
    conv = os.path.join(tmp, "bitnet_offline_0d")
    _save_any(conv, {k: v.reshape(()) if k.endswith("weight_scale") else v for k, v in tensors.items()},
              cfg, shard_bytes=shard_bytes)
    return Checkpoint(conv, path, "BitNetForCausalLM", d, "bitnet-offline", tern)


def bitnet_online(tmp, d, seed=2, use_rms_norm=False):
    """(2) transformers BitNet, autobitlinear online: bf16 full-precision masters."""
    sd = random_weights(d, seed, sub_norms=True)
    qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
    if use_rms_norm:
        qc.update(use_rms_norm=True, rms_norm_eps=1e-6)
        rng = _rng(seed + 100)
        for i in range(d.layers):
            for name, (n, k) in _linear_shapes(d).items():
                sd[f"model.layers.{i}.{name}.rms_norm.weight"] = (1 + 0.2 * rng.standard_normal(k)).astype(np.float32)
    tensors = {k: _bf16(v) for k, v in sd.items()}
    tern = {}
    for k, v in tensors.items():
        base = k[:-len(".weight")]
        if any(base.endswith(n) for n in _linear_shapes(d)):
            q, s = absmean_quant(v.float().numpy())
            tern[base] = (q, s, "mul")
    cfg = _config("bitnet", d, quantization_config=qc)
    path = os.path.join(tmp, "bitnet_online")
    _save_any(path, tensors, cfg)
    return Checkpoint(path, path, "BitNetForCausalLM", d, "bitnet-online", tern)


def bitnet_float(tmp, d, seed=6):
    """A BitNet graph without quantization_config (e.g. a 16-bit training twin): transformers
    runs plain nn.Linear in full precision, so it converts to an f16 model."""
    sd = random_weights(d, seed, sub_norms=True)
    path = os.path.join(tmp, "bitnet_float")
    _save_any(path, {k: torch.from_numpy(v) for k, v in sd.items()}, _config("bitnet", d))
    return Checkpoint(path, path, "BitNetForCausalLM", d, "bitnet-float", {})


def llama_bitlinear(tmp, d, seed=3, tokenizer="hf"):
    """(3) Llama + BitLinear (Falcon3-1.58bit style): packed U8, weight_scale = 1/mean|W| (divides)."""
    sd = random_weights(d, seed, sub_norms=False)
    sd, tern = _ternary_state(sd, d, absmean_quant, hf_pack, np.float32, "div")
    tern = {b: (q, np.float32(1.0) / s, "div") for b, (q, s) in tern.items()}
    cfg = _config("llama", d, architectures=["LlamaForCausalLM"],
                  quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear",
                                       "quantization_mode": "offline"})
    path = os.path.join(tmp, "llama_bitlinear")
    _save_any(path, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, cfg,
              tokenizer=tokenizer, tmp_dir=tmp)
    return Checkpoint(path, path, "LlamaForCausalLM", d, "llama-bitlinear", tern)


def shadow(tmp, d, seed=4, scale="absmean", tokenizer="hf", f32=False):
    """(4) 1bitLLM-style full-precision shadow weights: model_type llama, fp16, sub-norms named
    inner_attn_ln / ffn_layernorm, silu. Reference: the same weights as a transformers BitNet
    (hidden_act silu) quantized the same way: online autobitlinear (absmean) or, for absmedian,
    an offline checkpoint holding the absmedian-quantized weights. f32: the same fp16-exact
    values stored as float32 (bitnet.cpp's converter then ternarizes in float32, not fp16)."""
    sd = random_weights(d, seed, sub_norms=True)
    sd = {k: v.astype(np.float16).astype(np.float32) for k, v in sd.items()}
    src = {}
    for k, v in sd.items():
        k2 = k.replace("self_attn.attn_sub_norm", "self_attn.inner_attn_ln").replace("mlp.ffn_sub_norm", "mlp.ffn_layernorm")
        src[k2] = torch.from_numpy(v if f32 else v.astype(np.float16))
    cfg = _config("llama", d, hidden_act="silu", architectures=["BitnetForCausalLM"])
    path = os.path.join(tmp, f"shadow_{scale}")
    _save_any(path, src, cfg, tokenizer=tokenizer, tmp_dir=tmp)

    quant = absmean_quant if scale == "absmean" else absmedian_quant
    tern = {}
    for k, v in sd.items():
        base = k[:-len(".weight")]
        if any(base.endswith(n) for n in _linear_shapes(d)):
            tern[base] = quant(v) + ("mul",)
    ref = os.path.join(tmp, f"shadow_{scale}_reference")
    if scale == "absmean":
        qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
        ref_sd = {k: torch.from_numpy(v) for k, v in sd.items()}
    else:
        qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
        packed, _ = _ternary_state(sd, d, absmedian_quant, hf_pack, np.float32, "mul")
        ref_sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in packed.items()}
    _save_any(ref, ref_sd, _config("bitnet", d, hidden_act="silu", quantization_config=qc), tokenizer=None)
    return Checkpoint(path, ref, "BitNetForCausalLM", d, f"shadow-{scale}", tern)


def llama_plain(tmp, d, seed=5, ternary_reference=False):
    """(5) plain fp16 Llama. ternary_reference: the reference is the same weights with
    autobitlinear online (absmean ternary), i.e. what `--weights t2` makes of it."""
    sd = random_weights(d, seed, sub_norms=False)
    sd = {k: v.astype(np.float16) for k, v in sd.items()}
    cfg = _config("llama", d)
    path = os.path.join(tmp, "llama_plain")
    if not os.path.exists(path):
        _save_any(path, {k: torch.from_numpy(v) for k, v in sd.items()}, cfg)
    if not ternary_reference:
        return Checkpoint(path, path, "LlamaForCausalLM", d, "llama-f16")
    ref = os.path.join(tmp, "llama_plain_ternary_reference")
    qc = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
    _save_any(ref, {k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()},
              _config("llama", d, quantization_config=qc), tokenizer=None)
    return Checkpoint(path, ref, "LlamaForCausalLM", d, "llama-f16-as-t2")


def _save_any(path, tensors, config, tokenizer="hf", tmp_dir=None, shard_bytes=None):
    """Write torch tensors as (optionally sharded) safetensors + config.json + tokenizer."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shard_bytes is None:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        shards, cur, size = [], {}, 0
        for k, v in tensors.items():
            nbytes = v.numel() * v.element_size()
            if cur and size + nbytes > shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k] = v
            size += nbytes
        shards.append(cur)
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    _write_tokenizer(path, tokenizer, tmp_dir)


# ---------------------------------------------------------------------------------------------
# GGUF files written from the checkpoints above, the way llama.cpp's convert_hf_to_gguf.py does


def _hf_tensors(path):
    from safetensors.numpy import load_file
    from safetensors.torch import load_file as load_torch

    try:
        return load_file(os.path.join(path, "model.safetensors"))
    except TypeError:  # bf16: numpy has no dtype for it
        return {k: v.float().numpy() for k, v in load_torch(os.path.join(path, "model.safetensors")).items()}


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "self_attn.inner_attn_ln": "attn_sub_norm",
              "mlp.ffn_layernorm": "ffn_sub_norm"}


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: NeoX halves -> adjacent pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_header(w, arch, d):
    w.add_context_length(d.max_position)
    w.add_embedding_length(d.hidden)
    w.add_block_count(d.layers)
    w.add_feed_forward_length(d.inter)
    w.add_head_count(d.heads)
    w.add_head_count_kv(d.kv_heads)
    w.add_key_length(d.head_dim)
    w.add_value_length(d.head_dim)
    w.add_rope_dimension_count(d.head_dim)
    w.add_rope_freq_base(d.theta)
    w.add_layer_norm_rms_eps(d.eps)
    w.add_vocab_size(d.vocab)


def _gguf_sentencepiece_vocab(w, model_bytes, vocab):
    """convert_hf_to_gguf.py _set_vocab_sentencepiece: pieces, scores, types, [PAD{i}] padding."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 1)
    for i in range(len(tokens), vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)


def _gguf_bpe_vocab(w, tokenizer_json, vocab):
    """convert_hf_to_gguf.py _set_vocab_gpt2: tokens by id, merges, CONTROL for added specials."""
    tj = json.loads(tokenizer_json)
    by_id = {i: t for t, i in tj["model"]["vocab"].items()}
    specials = {}
    for t in tj["added_tokens"]:
        by_id[t["id"]] = t["content"]
        specials[t["id"]] = t["special"]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab)]
    types = [3 if specials.get(i) else 4 if i in specials else 5 if i not in by_id else 1 for i in range(vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(SPECIALS_IDS[0])
    w.add_eos_token_id(SPECIALS_IDS[1])
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)


def write_gguf_bitnet(ck, out, qtype="TQ2_0"):
    """A llama.cpp 'bitnet' GGUF of a 1bitLLM shadow checkpoint (BitnetModel in
    convert_hf_to_gguf.py): linears weight_quant'ed (absmean, in the fp16 model dtype) then
    stored as TQ1_0 / TQ2_0; norms F32; token_embd F16; tied."""
    import gguf

    d = ck.dims
    sd = _hf_tensors(ck.path)
    w = gguf.GGUFWriter(out, "bitnet")
    _gguf_header(w, "bitnet", d)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(1.0)
    with open(os.path.join(ck.path, "tokenizer.model"), "rb") as f:
        _gguf_sentencepiece_vocab(w, f.read(), d.vocab)
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].astype(np.float32))
    for i in range(d.layers):
        for hf, gg in GGUF_NAMES.items():
            v = sd[f"model.layers.{i}.{hf}.weight"].astype(np.float32)
            if hf in _linear_shapes(d):
                q, s = absmean_quant(v)
                wq = (q.astype(np.float32) * s).astype(np.float16).astype(np.float32)  # result.type(fp16)
                w.add_tensor(f"blk.{i}.{gg}.weight", gguf.quants.quantize(wq, qt), raw_dtype=qt)
            else:
                w.add_tensor(f"blk.{i}.{gg}.weight", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_rope_freqs(rp, head_dim):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: the rope_freqs tensor of a
    transformers "llama3" rope config (the per-dimension divisors of inv_freq)."""
    import math

    base = rp.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor, low, high = rp.get("factor", 8.0), rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def write_gguf_llama(ck, out, q8_0=(), rope=None):
    """A llama.cpp 'llama' GGUF of a plain fp16 Llama (LlamaModel in convert_hf_to_gguf.py):
    Q/K rows permuted, F16 matrices (Q8_0 for the HF names in q8_0), F32 norms, GPT-2 BPE vocab.
    rope: the transformers rope_parameters to carry, as convert_hf_to_gguf.py writes them
    (linear / yarn: rope.scaling.* keys; llama3: a rope_freqs tensor)."""
    import gguf

    d = ck.dims
    sd = _hf_tensors(ck.path)
    w = gguf.GGUFWriter(out, "llama")
    _gguf_header(w, "llama", d)
    kind = (rope or {}).get("rope_type", "default")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif kind == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(rope, d.head_dim))
    elif kind != "default":
        raise ValueError(f"no GGUF form for rope type {kind!r} here")
    with open(os.path.join(ck.path, "tokenizer.json"), "rb") as f:
        _gguf_bpe_vocab(w, f.read(), d.vocab)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].astype(np.float16))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].astype(np.float32))
    if not d.tied:
        w.add_tensor("output.weight", sd["lm_head.weight"].astype(np.float16))
    for i in range(d.layers):
        for hf, gg in GGUF_NAMES.items():
            key = f"model.layers.{i}.{hf}.weight"
            if key not in sd:
                continue
            v = sd[key]
            if hf == "self_attn.q_proj":
                v = llama_permute(v, d.heads)
            elif hf == "self_attn.k_proj":
                v = llama_permute(v, d.kv_heads)
            if hf in q8_0:
                qt = gguf.GGMLQuantizationType.Q8_0
                w.add_tensor(f"blk.{i}.{gg}.weight", gguf.quants.quantize(v.astype(np.float32), qt), raw_dtype=qt)
            elif hf in _linear_shapes(d):
                w.add_tensor(f"blk.{i}.{gg}.weight", v.astype(np.float16))
            else:
                w.add_tensor(f"blk.{i}.{gg}.weight", v.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
