"""ternary-convert: Hugging Face checkpoints and GGUF files -> .tpk (docs/CONTRACTS.md).

    ternary-convert SRC -o model.tpk [--weights|--format t2|t1|tl2] [--dtype f16] [--lm-head f16|int8|q4]
                                     [--scale absmean|absmedian]

SRC kinds (../shared/FORMATS.md), told apart by config.json and the tensor names:
  bitnet + quantization_config bitnet/autobitlinear/offline   packed ternary, out = acc/a*s ("mul")
  bitnet + ... /autobitlinear/online                          bf16 masters, absmean at conversion
  llama  + quantization_config bitnet/bitlinear               packed ternary, out = acc/(a*s) ("div")
  llama with sub-norms inner_attn_ln / ffn_layernorm          1bitLLM shadow weights, --scale
  llama (plain)                                               fp16 model (or --weights: absmean)
  a .gguf file of the llama or bitnet architecture            engine/convert/gguf.py

The rules below were checked against the installed transformers 5.23 sources:
  integrations/bitnet.py      pack_weights/unpack_weights (packed layout), BitLinear (divides by
                              the weight scale), AutoBitLinear (multiplies), WeightQuant (absmean:
                              s = 1/max(mean|W|, 1e-5), q = clamp(round(W*s), -1, 1), W' = q/s),
                              BitNetDeserialize (unpacks only when rows*4 == out_features),
                              replace_with_bitnet_linear (linear_class != autobitlinear ->
                              BitLinear whatever the quantization_mode; use_rms_norm ->
                              LlamaRMSNorm(in_features, quantization_config.rms_norm_eps))
  utils/quantization_config.py  BitNetQuantConfig defaults: bitlinear, offline, rms_norm_eps 1e-6
  quantizers/base.py          get_keys_to_not_convert: lm_head (output embeddings) stays float
  models/bitnet/modeling_bitnet.py  attn_sub_norm (hidden) before o_proj, ffn_sub_norm
                              (intermediate) before down_proj, rotate_half RoPE (NeoX),
                              head_dim = hidden // heads (BitNetConfig has no head_dim field)
  activations.py              "relu2" = ReLUSquaredActivation: relu(x) ** 2
  models/bitnet/configuration_bitnet.py  default_theta 500000, rms_norm_eps 1e-5,
                              tie_word_embeddings default False
  models/llama/modeling_llama.py, configuration_llama.py  silu MLP, head_dim field,
                              attention_bias / mlp_bias, rms_norm_eps default 1e-6
  modeling_rope_utils.py      rope_theta: rope_parameters["rope_theta"], else top-level
                              rope_theta, else the config class's default_theta
The 1bitLLM sub-norm names are llama.cpp's (gguf/tensor_mapping.py: inner_attn_ln ->
attn_sub_norm, ffn_layernorm -> ffn_sub_norm, "# bitnet"); its graph uses silu.
Memory: at most one tensor's float32 copy exists at a time; big matrices go in row chunks.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

from engine import quant
from engine.formats import tpk
from engine.convert import gguf
from engine.formats.tpk import TpkError
from engine.convert.source import (EOT_TOKENS, MALFORMED, ConvertError, Linear, SrcTensor,  # noqa: F401
                                   TensorSet, exact_ternary, ternarize, unpack_hf)

DEFAULT_THETA = {"bitnet": 500000.0, "llama": 10000.0}
LM_HEADS = tpk.LM_HEAD_FORMATS  # --lm-head choices (engine/quant.py: the q4 layout)
HF_PROJ = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
           "attn.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
           "mlp.down": "mlp.down_proj"}
# Sub-norm names: transformers BitNet / 1bitLLM shadow-weight checkpoints.
SUB_NORMS = {"attn.sub_norm": ("self_attn.attn_sub_norm", "self_attn.inner_attn_ln"),
             "mlp.sub_norm": ("mlp.ffn_sub_norm", "mlp.ffn_layernorm")}
# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoint directories


def _load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: not found ({what})") from None
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read {what}: {e}") from None


class HFCheckpoint(TensorSet):
    """A Hugging Face checkpoint directory: config.json plus single or sharded safetensors."""

    def __init__(self, src):
        self.dir = src
        self.cfg = _load_json(os.path.join(src, "config.json"), "the model config")
        index = os.path.join(src, "model.safetensors.index.json")
        if os.path.exists(index):
            files = sorted(set(_load_json(index, "the shard index").get("weight_map", {}).values()))
        elif os.path.exists(os.path.join(src, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            found = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
            if not found:
                bins = [f for f in os.listdir(src) if f.endswith(".bin")]
                hint = " (only PyTorch .bin files: re-save with safetensors)" if bins else ""
                raise ConvertError(f"{src}: no .safetensors weights{hint}")
            files = found
        found = {}
        for fname in files:
            _, tensors, dtypes = tpk.read_safetensors(os.path.join(src, fname), error=ConvertError)
            for name, arr in tensors.items():
                found[name] = SrcTensor(arr, dtypes[name])
        super().__init__(src, found)

    def unused(self):
        # Non-persistent buffers some old checkpoints carry.
        return sorted(n for n in self.tensors if n not in self.used and not n.endswith("rotary_emb.inv_freq"))


def _rope(cfg, model_type, head_dim) -> tuple[float, dict | None]:
    """-> (rope_theta, the .tpk rope_scaling dict or None), resolved the way transformers 5.25
    does (modeling_rope_utils.py RotaryEmbeddingConfigMixin.convert_rope_params_to_dict /
    standardize_rope_params and the _compute_*_parameters functions): a legacy `rope_scaling`
    wins over `rope_parameters`; rope_theta from the dict, else top-level, else the model's
    default; "type" is the old name of "rope_type"; llama3/yarn/longrope take
    original_max_position_embeddings from the top level first, then the dict, then
    max_position_embeddings."""
    rp = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(rp, dict) or any(isinstance(v, dict) for v in rp.values()):
        raise ConvertError("per-layer RoPE parameters are not supported")
    kind = rp.get("rope_type", rp.get("type", "default"))
    theta = rp.get("rope_theta")
    theta = float(cfg.get("rope_theta", DEFAULT_THETA[model_type]) if theta is None else theta)
    prf = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if prf is not None and float(prf) != 1.0:
        raise ConvertError(f"partial RoPE (partial_rotary_factor {prf}) is not supported")
    mpe = int(cfg.get("max_position_embeddings") or 2048)
    orig = int(cfg.get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") or mpe)
    try:
        if kind == "default" or (kind == "linear" and float(rp.get("factor", 1.0)) == 1.0):
            return theta, None
        if kind == "linear":
            return theta, {"rope_type": "linear", "factor": float(rp["factor"])}
        if kind == "dynamic":  # uses max_position_embeddings, not the original length
            return theta, {"rope_type": "dynamic", "factor": float(rp["factor"]), "max_position_embeddings": mpe}
        if kind == "llama3":
            return theta, {"rope_type": "llama3", "factor": float(rp["factor"]),
                           "low_freq_factor": float(rp["low_freq_factor"]),
                           "high_freq_factor": float(rp["high_freq_factor"]),
                           "original_max_position_embeddings": orig}
        if kind == "yarn":  # _compute_yarn_parameters: factor, then the attention factor
            factor = rp.get("factor")
            factor = float(mpe / orig if factor is None else factor)
            af = rp.get("attention_factor")
            if af is None:
                ms, ms_all = rp.get("mscale"), rp.get("mscale_all_dim")
                af = (_yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all) if ms and ms_all
                      else _yarn_mscale(factor))
            return theta, {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig,
                           "beta_fast": float(rp.get("beta_fast") or 32), "beta_slow": float(rp.get("beta_slow") or 1),
                           "truncate": bool(rp.get("truncate", True)), "attention_factor": float(af)}
        if kind == "longrope":  # _compute_longrope_parameters
            factor = rp.get("factor")
            factor = float(mpe / orig if factor is None else factor)
            af = rp.get("attention_factor")
            if af is None:
                af = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
            short, long_ = [float(x) for x in rp["short_factor"]], [float(x) for x in rp["long_factor"]]
            if len(short) != head_dim // 2 or len(long_) != head_dim // 2:
                raise ConvertError(f"longrope short/long_factor need {head_dim // 2} values each")
            return theta, {"rope_type": "longrope", "short_factor": short, "long_factor": long_,
                           "original_max_position_embeddings": orig, "attention_factor": float(af)}
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"RoPE type {kind!r}: missing or bad parameter {e}") from None
    raise ConvertError(f"RoPE type {kind!r} is not supported "
                       "(default, linear, dynamic, yarn, llama3, longrope)")


def _yarn_mscale(scale, mscale=1):
    """modeling_rope_utils.yarn_get_mscale."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _ids(value):
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def hf_tokenizer(src, cfg, vocab_size):
    """(tokenizer config dict, file bytes) from tokenizer.json or tokenizer.model."""
    tj, tm = os.path.join(src, "tokenizer.json"), os.path.join(src, "tokenizer.model")
    tcfg_path = os.path.join(src, "tokenizer_config.json")
    tcfg = _load_json(tcfg_path, "the tokenizer config") if os.path.exists(tcfg_path) else {}
    gen_path = os.path.join(src, "generation_config.json")
    gen = _load_json(gen_path, "the generation config") if os.path.exists(gen_path) else {}

    vocab = {}
    if os.path.exists(tj):
        kind, data = "hf", open(tj, "rb").read()
        try:
            tjson = json.loads(data)
        except ValueError:
            raise ConvertError(f"{tj}: not JSON") from None
        model_vocab = (tjson.get("model") or {}).get("vocab")
        vocab = dict(model_vocab) if isinstance(model_vocab, dict) else {}  # BPE/WordPiece: {piece: id}
        for tok in tjson.get("added_tokens") or []:
            vocab[tok["content"]] = tok["id"]
    elif os.path.exists(tm):
        kind, data, tjson = "sentencepiece", open(tm, "rb").read(), None
    else:
        raise ConvertError(f"{src}: no tokenizer.json or tokenizer.model")

    def token_id(tok):
        if isinstance(tok, dict):
            tok = tok.get("content")
        return vocab.get(tok) if isinstance(tok, str) else None

    bos = (_ids(cfg.get("bos_token_id")) or _ids(gen.get("bos_token_id")) or [token_id(tcfg.get("bos_token"))])[0]
    eos_list = _ids(cfg.get("eos_token_id")) + _ids(gen.get("eos_token_id"))
    eos = eos_list[0] if eos_list else token_id(tcfg.get("eos_token"))
    eot = next((vocab[t] for t in EOT_TOKENS if t in vocab), None)
    if eot is None:
        eot = next((i for i in eos_list if i != eos), None)

    if "add_bos_token" in tcfg:
        add_bos = bool(tcfg["add_bos_token"])
    elif kind == "hf":  # the post-processor template decides (Llama-3: "<|begin_of_text|> $A")
        single = ((tjson.get("post_processor") or {}).get("single") or [])
        procs = (tjson.get("post_processor") or {}).get("processors") or []
        for p in procs:
            single = single or (p.get("single") or [])
        first = single[0] if single else {}
        add_bos = "SpecialToken" in first and bos is not None and token_id(first["SpecialToken"]["id"]) == bos
    else:
        add_bos = bos is not None  # SentencePiece Llama: <s> first

    template = tcfg.get("chat_template")
    if isinstance(template, list):  # [{name, template}]: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    jinja = os.path.join(src, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        template = open(jinja, encoding="utf-8").read()

    def valid(i):
        return i if i is not None and 0 <= i < vocab_size else None

    return {"type": kind, "bos_id": valid(bos), "eos_id": valid(eos), "eot_id": valid(eot),
            "add_bos": bool(add_bos and valid(bos) is not None),
            "chat_template": template if isinstance(template, str) else None}, data


def _hf_quantization(src, cfg) -> tuple[dict, str | None, str | None]:
    """-> (quantization_config or {}, linear_class, quantization_mode); only bitnet's is known."""
    qc = cfg.get("quantization_config") or {}
    if qc and qc.get("quant_method") != "bitnet":
        raise ConvertError(f"{src}: quantization method {qc.get('quant_method')!r} is not supported (only bitnet)")
    if not qc:
        return qc, None, None
    for m in qc.get("modules_to_not_convert") or []:
        if "layers" in m:
            raise ConvertError(f"{src}: modules_to_not_convert {m!r}: mixed float/ternary layers are not supported")
    return qc, qc.get("linear_class", "bitlinear"), qc.get("quantization_mode", "offline")


def _hf_sub_norms(src, ck, model_type, heads, head_dim, hidden) -> dict:
    """{tpk sub-norm key: HF module name} when the checkpoint has both sub-norms, else {}."""
    sub_names = {}
    for key, candidates in SUB_NORMS.items():
        found = [c for c in candidates if ck.has(f"model.layers.0.{c}.weight")]
        sub_names[key] = found[0] if found else None
    sub_norms = all(sub_names.values())
    if any(sub_names.values()) and not sub_norms:
        raise ConvertError(f"{src}: only one of the two sub-norms found in layer 0")
    if model_type == "bitnet" and not sub_norms:
        raise ConvertError(f"{src}: a bitnet checkpoint without attn_sub_norm / ffn_sub_norm tensors")
    if sub_norms and heads * head_dim != hidden:
        raise ConvertError(f"{src}: sub-norms need num_heads * head_dim == hidden_size")
    return sub_names if sub_norms else {}


def _hf_weight_scheme(qc, linear_class, mode, sub_norms, model_type) -> tuple[str, str]:
    """-> (how the linears are stored: packed | master-ternary | float, scale_mode)."""
    if qc and linear_class != "autobitlinear":  # BitLinear: packed, out = acc / (a * s)
        return "packed", "div"
    if qc and mode == "offline":                # AutoBitLinear offline: packed, out = acc / a * s
        return "packed", "mul"
    if qc or (sub_norms and model_type != "bitnet"):  # online masters / 1bitLLM shadow weights
        return "master-ternary", "mul"
    # A bitnet checkpoint without quantization_config is a full-precision model: transformers
    # (models/bitnet) then runs plain nn.Linear, so it converts to f16 unless --weights asks.
    return "float", "mul"                       # plain float model


def _hf_config(src, cfg, ck) -> tuple[dict, dict, str]:
    """-> (the .tpk config without formats, {sub-norm key: HF name}, how the linears are stored)."""
    model_type = cfg.get("model_type")
    if model_type not in ("bitnet", "llama"):
        raise ConvertError(f"{src}: unsupported model_type {model_type!r} (supported: bitnet, llama)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ConvertError(f"{src}: linear biases are not supported")
    try:
        hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        layers, heads = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{src}/config.json: missing or bad {e}") from None
    if heads <= 0:  # divides the hidden size below
        raise ConvertError(f"{src}/config.json: num_attention_heads {heads} must be positive")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    qc, linear_class, mode = _hf_quantization(src, cfg)
    sub_names = _hf_sub_norms(src, ck, model_type, heads, head_dim, hidden)
    sub_norms = bool(sub_names)
    act = cfg.get("hidden_act", "relu2" if model_type == "bitnet" else "silu")
    if act not in ("relu2", "silu"):
        raise ConvertError(f"{src}: hidden_act {act!r} is not supported (relu2, silu)")
    how, scale_mode = _hf_weight_scheme(qc, linear_class, mode, sub_norms, model_type)
    theta, rope_scaling = _rope(cfg, model_type, head_dim)
    config = {
        "format_version": tpk.FORMAT_VERSION,
        # "bitnet" = the graph with sub-norms; hidden_act says relu2 (BitNet) or silu (1bitLLM)
        "architecture": "bitnet" if sub_norms else "llama",
        "hidden_size": hidden, "intermediate_size": inter, "num_layers": layers,
        "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
        "max_position": int(cfg.get("max_position_embeddings") or 2048),
        "rms_norm_eps": float(cfg.get("rms_norm_eps") or (1e-5 if model_type == "bitnet" else 1e-6)),
        "rope_theta": theta, "rope_style": "neox",
        "hidden_act": act, "sub_norms": sub_norms,
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "scale_mode": scale_mode,
        "proj_norm_eps": float(qc.get("rms_norm_eps") or 1e-6) if qc and qc.get("use_rms_norm") else None,
    }
    if rope_scaling is not None:  # absent: plain RoPE (files written before the key existed)
        config["rope_scaling"] = rope_scaling
    return config, sub_names, how


def _hf_linears(ck, config, how) -> dict:
    linears, scale_mode, proj_norm_eps = {}, config["scale_mode"], config["proj_norm_eps"]
    for prefix, (n, k) in tpk.linear_shapes(config).items():
        i, proj = prefix.split(".", 2)[1], prefix.split(".", 2)[2]
        base = f"model.layers.{i}.{HF_PROJ[proj]}"
        w = ck.get(f"{base}.weight")
        in_norm = ck.get(f"{base}.rms_norm.weight") if proj_norm_eps is not None else None
        if how == "packed":
            linears[prefix] = Linear(load_ternary=_packed_loader(ck, base, n, k, scale_mode),
                                     scale_mode=scale_mode, in_norm=in_norm)
        else:
            if w.shape != (n, k):
                raise ConvertError(f"{base}.weight is {list(w.shape)}, expected [{n}, {k}]")
            linears[prefix] = Linear(master=w, is_ternary=how == "master-ternary", in_norm=in_norm)
    return linears


def _hf_vectors(src, ck, config, sub_names) -> dict:
    vectors = {"embed": ck.get("model.embed_tokens.weight"), "norm": ck.get("model.norm.weight")}
    for i in range(config["num_layers"]):
        vectors[f"layers.{i}.attn_norm"] = ck.get(f"model.layers.{i}.input_layernorm.weight")
        vectors[f"layers.{i}.ffn_norm"] = ck.get(f"model.layers.{i}.post_attention_layernorm.weight")
        for key, hf_name in sub_names.items():
            vectors[f"layers.{i}.{key}"] = ck.get(f"model.layers.{i}.{hf_name}.weight")
    if config["tie_word_embeddings"]:
        if ck.has("lm_head.weight"):
            ck.get("lm_head.weight")  # a saved copy of the tied embedding
    else:
        vectors["lm_head"] = ck.get("lm_head.weight")
        if vectors["lm_head"].dtype == "U8":
            raise ConvertError(f"{src}: a ternary lm_head is not supported")
    return vectors


def hf_source(src):
    """-> (config without formats, {prefix: Linear}, {tpk name: SrcTensor} of norms, embed and
    lm_head, (tokenizer config, bytes), default weight format)."""
    try:
        return _hf_source(src)
    except MALFORMED as e:
        raise ConvertError(f"{src}: malformed config.json or tokenizer files "
                           f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _hf_source(src):
    ck = HFCheckpoint(src)
    config, sub_names, how = _hf_config(src, ck.cfg, ck)
    if not 0 < config["num_layers"] <= len(ck.tensors):  # bounds what is built per layer
        raise ConvertError(f"{src}/config.json: num_hidden_layers {config['num_layers']} does not fit "
                           f"the checkpoint's {len(ck.tensors)} tensors")
    linears = _hf_linears(ck, config, how)
    vectors = _hf_vectors(src, ck, config, sub_names)
    extra = ck.unused()
    if extra:
        raise ConvertError(f"{src}: unexpected tensor {extra[0]!r}"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    tok_config, tok_bytes = hf_tokenizer(src, ck.cfg, config["vocab_size"])
    return config, linears, vectors, (tok_config, tok_bytes), "f16" if how == "float" else "t2"


def _packed_loader(ck, base, n, k, scale_mode):
    w, scale_t = ck.get(f"{base}.weight"), ck.get(f"{base}.weight_scale")
    if scale_t.arr.size != 1:
        raise ConvertError(f"{base}.weight_scale has {scale_t.arr.size} values, expected 1")
    if not (w.dtype == "U8" and w.shape == (n // 4, k)) and w.shape != (n, k):
        raise ConvertError(f"{base}.weight is {w.dtype}{list(w.shape)}, expected packed U8[{n // 4}, {k}]")

    def load():
        scale = np.float32(scale_t.f32().reshape(-1)[0])
        if w.dtype == "U8":
            return unpack_hf(w.arr, n), scale, scale_mode
        q = w.f32()  # an offline checkpoint saved unpacked: the values must be ternary already
        if not np.all(np.isin(q, (-1.0, 0.0, 1.0))):
            raise ConvertError(f"{base}.weight: offline weights are not in {{-1, 0, 1}}")
        return q.astype(np.int8), scale, scale_mode
    return load


# ---------------------------------------------------------------------------------------------
# the output


def _f16(t, name):
    """SrcTensor -> float16 array, row chunk by row chunk; refuses values fp16 cannot hold."""
    out = np.empty(t.shape, dtype=np.float16)
    with np.errstate(over="ignore"):  # beyond +-65504 becomes inf: caught just below
        for rows in t.row_chunks():
            out[rows] = t.f32(rows)
            if not np.isfinite(out[rows]).all():
                raise ConvertError(f"{name}: values beyond the float16 range (or NaN)")
    return out


def _fits_f16(t) -> bool:
    """Whether float16 holds the embedding: every normal-range value exact (bf16 and f16
    sources; f16 subnormals only lose ~3e-8 absolute on tiny values) and nothing beyond +-65504.
    An f32 embedding that is not (e.g. a BitNet checkpoint saved "offline" with f32 tied
    embeddings) is stored as f32: rounding it to f16 perturbs the residual stream by ~5e-4
    relative, enough to flip int8 activation roundings downstream, which moved logits by
    1-4 % of max |logit| against transformers (issue 16 item 5)."""
    for rows in t.row_chunks():
        x = t.f32(rows)
        with np.errstate(over="ignore"):
            y = x.astype(np.float16).astype(np.float32)
        if not np.all((y == x) | (np.abs(x) < np.float32(2.0 ** -14))):
            return False
    return True


def _kernels():
    try:
        from engine import kernels
    except ImportError as e:
        raise ConvertError(f"the C++ kernels (engine._kernels) are not built: {e}") from None
    return kernels


def _check_options(src, weights, lm_head, scale, dtype) -> None:
    if dtype not in (None, "f16"):
        raise ConvertError(f"--dtype {dtype!r}: only f16")
    if dtype == "f16" and weights is not None:
        raise ConvertError("--dtype f16 and --weights exclude each other (fp16 model or ternary model)")
    if weights is not None and weights not in tpk.TERNARY_FORMATS:
        raise ConvertError(f"--weights {weights!r}: expected {' or '.join(tpk.TERNARY_FORMATS)}")
    if lm_head not in LM_HEADS:
        raise ConvertError(f"--lm-head {lm_head!r}: expected one of {', '.join(LM_HEADS)}")
    if scale not in ("absmean", "absmedian"):
        raise ConvertError(f"--scale {scale!r}: expected absmean or absmedian")
    if not os.path.exists(src):
        raise ConvertError(f"{src}: no such file or directory")


def _producer(linears, vectors, tok_bytes, fmt, lm_head, scale, embed_f32=False):
    """produce(name) -> the array of tpk tensor `name`, or a dict of several (each linear's
    weight and scale come together, as do the lm_head tensors)."""
    kernels = _kernels() if fmt in tpk.TERNARY_FORMATS else None

    def produce(name):
        if name == "tokenizer":
            return np.frombuffer(tok_bytes, dtype=np.uint8)
        if name == "embed":
            if embed_f32:
                return np.ascontiguousarray(vectors["embed"].f32())
            return _f16(vectors["embed"], name)
        if name.startswith("lm_head."):
            head = vectors.get("lm_head", vectors["embed"])
            if lm_head in quant.HEAD_TENSORS:
                return quant.head_tensors(lm_head, head.shape, ((r, head.f32(r)) for r in head.row_chunks()))
            return _f16(head, name)
        prefix, _, leaf = name.rpartition(".")
        if prefix in linears:
            lin = linears[prefix]
            if leaf == "in_norm":
                return lin.in_norm.f32().reshape(-1)
            return _linear(prefix, lin, fmt, scale, kernels)
        return np.ascontiguousarray(vectors[name].f32().reshape(-1))
    return produce


def _write(src, out, config, specs, produce, progress) -> None:
    """Every tensor of specs, in order, into the .tpk `out` (removed again on any failure)."""
    from tqdm import tqdm

    writer = tpk.Writer(out, config, specs)
    done = set()
    try:
        bar = tqdm(total=len(specs), desc="ternary-convert", unit="tensor", file=sys.stderr,
                   disable=True if progress is False else None)  # None: only on a terminal
        for name in specs:
            if name in done:
                continue
            result = produce(name)
            for n, arr in (result if isinstance(result, dict) else {name: result}).items():
                try:
                    writer.write_tensor(n, arr)
                except ValueError as e:
                    raise ConvertError(f"{src}: {e}") from None
                done.add(n)
                bar.update(1)
            del result
        bar.close()
        writer.close()
    except BaseException:
        writer.abort()
        raise


def convert(src, out, weights=None, lm_head="f16", scale="absmean", dtype=None, progress=None):
    """Convert SRC (HF checkpoint directory or .gguf file) to the .tpk `out`; returns its config."""
    _check_options(src, weights, lm_head, scale, dtype)
    if os.path.isdir(src):
        config, linears, vectors, tokenizer, default_weights = hf_source(src)
    else:
        config, linears, vectors, tokenizer, default_weights = gguf.gguf_source(src)

    fmt = "f16" if dtype == "f16" else weights or default_weights
    tok_config, tok_bytes = tokenizer
    _check_tokenizer(src, tok_config, tok_bytes)
    config.update({"weight_format": fmt, "lm_head_format": lm_head, "tokenizer": tok_config})
    modes = {lin.scale_mode for lin in linears.values() if lin.load_ternary is not None}
    if len(modes) > 1:
        raise ConvertError(f"{src}: linears with both scale modes in one model")
    config["scale_mode"] = modes.pop() if modes and fmt != "f16" else "mul"
    try:
        tpk.check_config(config)
    except TpkError as e:
        raise ConvertError(f"{src}: {e}") from None
    embed_dtype = "F16" if _fits_f16(vectors["embed"]) else "F32"
    specs = tpk.expected_tensors(config, embed_dtype, len(tok_bytes))
    if embed_dtype == "F32" and config["tie_word_embeddings"] and lm_head == "f16":
        del specs["lm_head.weight"]  # tied: the head is the exact f32 embedding (tpk.validate)
    _write(src, out, config, specs, _producer(linears, vectors, tok_bytes, fmt, lm_head, scale,
                                                embed_dtype == "F32"), progress)
    return config


def _check_tokenizer(src, tok_config, tok_bytes):
    """Load the tokenizer the .tpk will hold, as the engine will: a file Python's json module
    reads can still be one the tokenizers library refuses (or one that fails on every text),
    and that must be a conversion error, not a .tpk the engine then rejects."""
    from engine.runtime.tokenizer import Tokenizer, TokenizerError

    try:
        Tokenizer.from_bytes(tok_config["type"], tok_bytes, tok_config)
    except TokenizerError as e:
        raise ConvertError(f"{src}: tokenizer: {e}") from None


def _linear(prefix, lin, fmt, scale_method, kernels):
    """{prefix.weight: ..., prefix.scale: ...} of one linear in the output format."""
    if lin.load_ternary is not None:
        q, s, mode = lin.load_ternary()
    elif fmt == "f16" and not lin.is_ternary:
        return {f"{prefix}.weight": _f16(lin.master, f"{prefix}.weight")}
    else:
        found = exact_ternary(lin.master) if lin.exact else None
        q, s = found if found is not None else ternarize(lin.master, scale_method)
        mode = "mul"
    if fmt == "f16":  # a ternary model as fp16: the dequantized ternary weights
        w = q.astype(np.float32) * s if mode == "mul" else q.astype(np.float32) / s
        return {f"{prefix}.weight": w.astype(np.float16)}
    return {f"{prefix}.weight": kernels.pack(fmt, np.ascontiguousarray(q)),
            f"{prefix}.scale": np.array([s], dtype=np.float32)}


# ---------------------------------------------------------------------------------------------
# command line


def build_parser():
    p = argparse.ArgumentParser(
        prog="ternary-convert",
        description="Convert a Hugging Face checkpoint directory (BitNet, Llama + BitLinear, "
                    "1bitLLM shadow weights, plain Llama; single or sharded safetensors) or a "
                    "llama/bitnet GGUF file to a .tpk model file.")
    p.add_argument("src", help="checkpoint directory or .gguf file")
    p.add_argument("-o", "--output", required=True, help="the .tpk file to write")
    p.add_argument("--weights", "--format", dest="weights", choices=tpk.TERNARY_FORMATS,
                   help="packed ternary format: t2 (2 bits/weight, default for ternary models), "
                        "t1 (1.6 bits/weight, 20%% smaller) or tl2 (1.67 bits/weight, read by "
                        "table lookup: the fastest kernels); on a plain float model: ternarize it")
    p.add_argument("--dtype", choices=("f16",),
                   help="write an fp16 model instead (the baseline; ternary weights are dequantized)")
    p.add_argument("--lm-head", choices=LM_HEADS, default="f16",
                   help="output head: f16 (default), int8 with one scale per vocabulary row, or q4 "
                        "(4.25 bits/weight: groups of 128 with integer sub-scales; the smallest "
                        "decode step, at some accuracy)")
    p.add_argument("--scale", choices=("absmean", "absmedian"), default="absmean",
                   help="ternary scale for full-precision weights: mean|W| (default) or median|W|")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        config = convert(args.src, args.output, weights=args.weights, lm_head=args.lm_head,
                         scale=args.scale, dtype=args.dtype, progress=False if args.quiet else None)
    except (ConvertError, TpkError) as e:
        print(f"ternary-convert: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the output directory does not exist, disk full
        print(f"ternary-convert: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ternary-convert: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        size = os.path.getsize(args.output)
        print(f"wrote {args.output}: {config['architecture']}, {config['num_layers']} layers, "
              f"weights {config['weight_format']}, {size / 2**20:.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
