"""Quantization-aware training of a small BitNet b1.58 model (torch; `train` extra).

    python -m ternary_train.qat --config small --out ~/.cache/ternary-engine/runs/small [--resume]

The model is exactly transformers' BitNetForCausalLM graph (model_type "bitnet",
transformers/models/bitnet/modeling_bitnet.py): RMSNorm pre-norms, attn_sub_norm
before o_proj, ffn_sub_norm before down_proj, relu2 MLP
``down(ffn_sub_norm(relu(gate(x))**2 * up(x)))``, NeoX RoPE, GQA, tied embeddings.
Parameter names are the Hugging Face ones, so export is a renaming plus packing.

Every projection is a BitLinear with a full-precision shadow weight:
- activations: per-token 8-bit absmax, as transformers' ActQuant
  (transformers/integrations/bitnet.py, class ActQuant, checked in 5.23.0):
  s = 127 / max(|x|, 1e-5) over the last dim, q = clamp(round(x * s), -128, 127)
  with torch.round (half to even), computed in float32, dequantized as q / s.
- weights: ternary T = clamp(round(W / ws), -1, 1) with ws = mean|W| (AbsMean,
  BitNet b1.58) or median|W| (AbsMedian, BitNet b1.58 Reloaded, arXiv 2407.09527),
  floored at 1e-5.
- output in the BitNet "multiply" convention of AutoBitLinear (offline mode):
  y = (q @ T^T) / s * ws, which is what the exported weight_scale means.
- straight-through estimator: the forward uses the quantized values, the
  backward passes gradients through unchanged (ws and s are treated as constants).
quant="none" trains the same graph with plain linears (the 16-bit twin).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import DEFAULT_OUT as DEFAULT_CORPUS

DEFAULT_RUNS = Path.home() / ".cache" / "ternary-engine" / "runs"
QUANT_MODES = ("absmean", "absmedian", "none")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 64
    max_position: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    quant: str = "absmean"          # absmean | absmedian | none
    bos_id: int = 1
    eos_id: int = 2
    init_std: float = 0.02


@dataclass
class TrainConfig:
    seq_len: int = 256
    batch_size: int = 16
    tokens: int = 10_000_000        # training budget (tokens seen)
    lr: float = 3e-3                # peak; the 16-bit twin uses lr_fp
    lr_fp: float = 1.5e-3
    warmup_frac: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every_s: float = 240.0
    eval_tokens: int = 8192         # periodic val estimate (first windows of val)
    ckpt_every_s: float = 300.0
    seed: int = 1234
    # > 0: the schedule runs on wall-clock time instead of steps: progress = elapsed /
    # time_budget_s (training stops at 1, or at `tokens` if that comes first). On a
    # shared machine the speed is unknown in advance; this way the two-stage schedule
    # still completes. Resumable, but not bit-exact (lr depends on the clock).
    time_budget_s: float = 0.0
    warmup_steps: int = 200         # the time-budget schedule warms up over steps, not seconds
    autocast: str = "none"          # none | bf16 (CPU autocast of the training forward)


# name -> (model kwargs, train kwargs)
CONFIGS = {
    "test": (dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_layers=2,
                  num_heads=2, num_kv_heads=1, head_dim=32, max_position=64),
             dict(seq_len=32, batch_size=4, tokens=1024, eval_tokens=1024)),
    "tiny": (dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=2,
                  num_kv_heads=2, head_dim=64), dict(tokens=2_000_000)),
    # the shipped model: sized by measured 1-thread training speed (docs/training.md)
    "small": (dict(hidden_size=192, intermediate_size=512, num_layers=4, num_heads=3,
                   num_kv_heads=3, head_dim=64), dict(tokens=3_000_000, batch_size=8)),
    # the shipped model since issue 19: context 512, sized by measured 2-thread speed
    # (the tokens are a cap: the schedule runs on a one-hour wall-clock budget, bf16 autocast)
    "base": (dict(hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4,
                  num_kv_heads=4, head_dim=64, max_position=512),
             dict(seq_len=512, batch_size=4, tokens=40_000_000, time_budget_s=3600.0,
                  autocast="bf16")),
}


# ----------------------------------------------------------------------------
# quantizers

def act_quant(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 absmax fake-quant, as transformers' ActQuant.forward (float32)."""
    xf = x.float()
    s = 127.0 / xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return ((xf * s).round().clamp(-128, 127) / s).to(x.dtype)


def weight_scale(w: torch.Tensor, mode: str) -> torch.Tensor:
    a = w.detach().float().abs()
    if mode == "absmean":
        s = a.mean()
    elif mode == "absmedian":
        s = a.flatten().median()
    else:
        raise ValueError(f"unknown weight quant mode {mode!r}")
    return s.clamp(min=1e-5)


def ternarize(w: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (T in {-1,0,1} as float, scale ws) with W ~ T * ws."""
    ws = weight_scale(w, mode)
    t = (w.detach().float() / ws).round().clamp(-1, 1)
    return t, ws


class BitLinear(nn.Linear):
    """nn.Linear with a full-precision shadow weight, ternary weights and int8
    activations in the forward, straight-through gradients in the backward."""

    def __init__(self, in_features, out_features, quant="absmean"):
        super().__init__(in_features, out_features, bias=False)
        if quant not in QUANT_MODES:
            raise ValueError(f"quant must be one of {QUANT_MODES}")
        self.quant = quant

    def quant_input(self, x):
        """The STE int8 activations of x; projections that share an input (q/k/v,
        gate/up) quantize it once and pass it with prequantized=True."""
        if self.quant == "none":
            return x
        return x + (act_quant(x) - x).detach()

    def forward(self, x, prequantized: bool = False):
        if self.quant == "none":
            return F.linear(x, self.weight)
        xq = x if prequantized else self.quant_input(x)
        t, ws = ternarize(self.weight, self.quant)
        w_over = self.weight / ws                        # d/dW flows through W / ws
        tq = w_over + (t.to(w_over.dtype) - w_over).detach()
        return F.linear(xq, tq) * ws                     # (q @ T^T) / s * ws


class RMSNorm(nn.Module):
    # as BitNetRMSNorm: float32 statistics, cast back, then times weight
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dt)


def rope_cos_sin(cfg: ModelConfig, T: int, device=None):
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32,
                                                 device=device) / cfg.head_dim))
    pos = torch.arange(T, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv)                        # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)              # (T, D)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, q = cfg.hidden_size, cfg.head_dim, cfg.quant
        self.nh, self.nkv, self.d = cfg.num_heads, cfg.num_kv_heads, d
        self.q_proj = BitLinear(h, cfg.num_heads * d, q)
        self.k_proj = BitLinear(h, cfg.num_kv_heads * d, q)
        self.v_proj = BitLinear(h, cfg.num_kv_heads * d, q)
        self.o_proj = BitLinear(cfg.num_heads * d, h, q)
        self.attn_sub_norm = RMSNorm(h, cfg.rms_norm_eps)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        x = self.q_proj.quant_input(x)                  # one int8 quantization for q, k, v
        q = self.q_proj(x, True).view(B, T, self.nh, self.d).transpose(1, 2)     # (B, Hq, T, D)
        k = self.k_proj(x, True).view(B, T, self.nkv, self.d).transpose(1, 2)    # (B, Hkv, T, D)
        v = self.v_proj(x, True).view(B, T, self.nkv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.nkv != self.nh:
            rep = self.nh // self.nkv                    # query head h uses kv head h // rep
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(B, T, self.nh * self.d)
        return self.o_proj(self.attn_sub_norm(a))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, i, q = cfg.hidden_size, cfg.intermediate_size, cfg.quant
        self.gate_proj = BitLinear(h, i, q)
        self.up_proj = BitLinear(h, i, q)
        self.down_proj = BitLinear(i, h, q)
        self.ffn_sub_norm = RMSNorm(i, cfg.rms_norm_eps)

    def forward(self, x):
        x = self.gate_proj.quant_input(x)               # one int8 quantization for gate, up
        h = F.relu(self.gate_proj(x, True)) ** 2 * self.up_proj(x, True)
        return self.down_proj(self.ffn_sub_norm(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class BitNetLM(nn.Module):
    """BitNetForCausalLM with tied embeddings; state_dict names match HF's
    (model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ...)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.num_heads * cfg.head_dim != cfg.hidden_size:
            raise ValueError("attn_sub_norm has size hidden: need num_heads * head_dim == hidden_size")
        if cfg.num_heads % cfg.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        self.cfg = cfg
        self.model = Body(cfg)
        cos, sin = rope_cos_sin(cfg, cfg.max_position)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)

    def _init(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)

    def forward(self, ids):                              # ids (B, T) -> logits (B, T, V)
        T = ids.shape[1]
        if T > self.cfg.max_position:
            raise ValueError(f"sequence of {T} tokens > max_position {self.cfg.max_position}")
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight)

    def num_params(self):
        emb = self.model.embed_tokens.weight.numel()
        return emb, sum(p.numel() for p in self.parameters()) - emb


def build_model(cfg: ModelConfig, seed: int) -> BitNetLM:
    torch.manual_seed(seed)
    return BitNetLM(cfg)


# ----------------------------------------------------------------------------
# data: the token stream (uint16 .npy, mmapped) cut into windows; each window is
# fed as [bos] + window[:-1] and scored on window (every token is predicted once).

def batch_at(stream: np.ndarray, step: int, seed: int, batch_size: int, seq_len: int, bos: int):
    rng = np.random.default_rng([seed, step])           # data position == step: exact resume
    starts = rng.integers(0, len(stream) - seq_len, size=batch_size)
    win = np.stack([np.asarray(stream[s:s + seq_len], dtype=np.int64) for s in starts])
    y = torch.from_numpy(win)
    x = torch.cat([torch.full((batch_size, 1), bos, dtype=torch.int64), y[:, :-1]], dim=1)
    return x, y


@torch.no_grad()
def evaluate(model: BitNetLM, stream: np.ndarray, seq_len: int, max_tokens: int | None = None,
             batch_size: int = 16) -> tuple[float, int]:
    """Mean NLL (nats/token) over non-overlapping windows of seq_len tokens of the
    stream (the last one shorter), each fed as [bos] + window[:-1]."""
    was = model.training
    model.eval()
    n = len(stream) if max_tokens is None else min(len(stream), max_tokens)
    bos = model.cfg.bos_id
    total, count = 0.0, 0
    starts = list(range(0, n, seq_len))
    full = [s for s in starts if s + seq_len <= n]
    for i in range(0, len(full), batch_size):
        ss = full[i:i + batch_size]
        y = torch.from_numpy(np.stack([np.asarray(stream[s:s + seq_len], dtype=np.int64) for s in ss]))
        x = torch.cat([torch.full((len(ss), 1), bos, dtype=torch.int64), y[:, :-1]], dim=1)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    rest = [s for s in starts if s + seq_len > n]
    for s in rest:
        y = torch.from_numpy(np.asarray(stream[s:n], dtype=np.int64))[None]
        x = torch.cat([torch.full((1, 1), bos, dtype=torch.int64), y[:, :-1]], dim=1)
        logits = model(x)
        total += F.cross_entropy(logits[0].float(), y[0], reduction="sum").item()
        count += y.numel()
    model.train(was)
    return total / max(count, 1), count


# ----------------------------------------------------------------------------
# schedule: two stages as in the BitNet b1.58 training recipe (Ma et al. 2024,
# "The Era of 1-bit LLMs: training tips"; 2B4T report: 1.5e-3 -> 8e-4, then
# 5e-4 -> 0, weight decay 0.1 then 0): warmup, cosine from peak to 0.53 peak
# over the first half, then from 0.33 peak to 0 with no weight decay.

def lr_wd_at(step: int, total: int, tc: TrainConfig, peak: float) -> tuple[float, float]:
    warm = max(1, int(tc.warmup_frac * total))
    half = total // 2
    if step < warm:
        return peak * (step + 1) / warm, tc.weight_decay
    if step < half:
        p = (step - warm) / max(1, half - warm)
        return peak * (0.53 + 0.47 * 0.5 * (1 + math.cos(math.pi * p))), tc.weight_decay
    p = (step - half) / max(1, total - half)
    return peak * 0.33 * 0.5 * (1 + math.cos(math.pi * p)), 0.0


def lr_wd_frac(f: float, step: int, tc: TrainConfig, peak: float) -> tuple[float, float]:
    """The two stages of lr_wd_at with progress f in [0, 1] (the time-budget schedule).
    Warmup is linear over the first tc.warmup_steps steps, not seconds: a run paused
    (or slowed) early must not reach the peak LR after a handful of updates."""
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if f < 0.5:
        p = f / 0.5
        return warm * peak * (0.53 + 0.47 * 0.5 * (1 + math.cos(math.pi * p))), tc.weight_decay
    p = min(1.0, (f - 0.5) / 0.5)
    return warm * peak * 0.33 * 0.5 * (1 + math.cos(math.pi * p)), 0.0


def make_optimizer(model: BitNetLM, tc: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 else no_decay).append(p)   # norms: no weight decay
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=1e-8)


# ----------------------------------------------------------------------------
# export

def _pack_hf(t: torch.Tensor) -> torch.Tensor:
    """Ternary int [out, in] -> U8 [out/4, in]: byte[r, c] bits (2i, 2i+1) hold
    T[i*R + r, c] + 1 with R = out/4 (transformers/integrations/bitnet.py pack_weights)."""
    out, k = t.shape
    if out % 4:
        raise ValueError("out_features must be a multiple of 4 to pack")
    R = out // 4
    u = (t.to(torch.int16) + 1).to(torch.uint8)
    packed = torch.zeros((R, k), dtype=torch.uint8)
    for i in range(4):
        packed |= u[i * R:(i + 1) * R] << (2 * i)
    return packed


def hf_config(cfg: ModelConfig) -> dict:
    c = {
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "relu2",
        "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": True,
        "attention_bias": False,
        "bos_token_id": cfg.bos_id,
        "eos_token_id": cfg.eos_id,
        "torch_dtype": "float32",
        "initializer_range": cfg.init_std,
    }
    if cfg.quant != "none":
        c["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                    "quantization_mode": "offline"}
    return c


def export_hf(model: BitNetLM, out: Path, tokenizer_model: Path | None = None) -> Path:
    """Write a transformers BitNet checkpoint: config.json, model.safetensors
    (packed U8 ternary weights + weight_scale; embeddings and norms F32, see
    FORMATS.md's dtype trap), tokenizer files. The 16-bit twin is written as
    plain F16 linears without a quantization_config."""
    from safetensors.torch import save_file
    cfg = model.cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.state_dict().items():
        if name.startswith("rope_"):
            continue
        p = p.detach().float().contiguous()
        if name.endswith("_proj.weight"):
            if cfg.quant == "none":
                tensors[name] = p.half().contiguous()
            else:
                t, ws = ternarize(p, cfg.quant)
                tensors[name] = _pack_hf(t)
                tensors[name[:-len("weight")] + "weight_scale"] = ws.reshape(1).float()
        else:
            tensors[name] = p                            # embed_tokens, norms: F32
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id}, indent=2))
    if tokenizer_model is not None:
        import shutil
        shutil.copyfile(tokenizer_model, out / "tokenizer.model")
        (out / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
            "add_prefix_space": False, "legacy": False, "model_max_length": cfg.max_position,
        }, indent=2))
        (out / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))
    return out


def export_tpk(hf_dir: Path, out: Path) -> Path | None:
    """HF checkpoint -> .tpk through the project's converter (ternary-convert)."""
    try:
        import engine.convert as convert
    except Exception as e:  # converter not available (yet)
        print(f"no .tpk written: engine.convert unavailable ({e})", file=sys.stderr)
        return None
    fn = getattr(convert, "convert", None)
    if fn is None:
        print("no .tpk written: engine.convert has no convert()", file=sys.stderr)
        return None
    fn(str(hf_dir), str(out))
    return Path(out)


# ----------------------------------------------------------------------------
# training

def _rng_state():
    # numpy's state as plain Python values: checkpoints load with torch.load(weights_only=True),
    # whose unpickler admits tensors and builtins only (no code runs from a checkpoint file).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached))}


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(s["python"])


def save_checkpoint(path: Path, model, opt, step, tokens, elapsed, mc, tc, extra=None):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step,
                "tokens": tokens, "elapsed": elapsed, "rng": _rng_state(),
                "model_config": dataclasses.asdict(mc), "train_config": dataclasses.asdict(tc),
                "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load_model(ckpt_path: Path) -> BitNetLM:
    ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = BitNetLM(ModelConfig(**ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model


def corpus_streams(corpus: Path, vocab: int):
    corpus = Path(corpus).expanduser()
    tok = corpus / f"tok{vocab}.model"
    tr, va = corpus / f"tok{vocab}.train.npy", corpus / f"tok{vocab}.val.npy"
    if not (tok.exists() and tr.exists() and va.exists()):
        raise SystemExit(f"missing {tok} or its token streams: run "
                         f"python -m ternary_train.corpus and python -m ternary_train.tokenizer --vocab {vocab}")
    return tok, np.load(tr, mmap_mode="r", allow_pickle=False), np.load(va, mmap_mode="r", allow_pickle=False)


def _start_or_resume(ckpt, csv_path, model, opt, mc, tc, resume, log):
    """-> (step, tokens, elapsed, loss window): restored from ckpt on resume (the CSV log cut back
    to the checkpoint), else zero with a fresh CSV; an existing ckpt without resume is refused."""
    step, tokens, elapsed = 0, 0, 0.0
    if resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
        if ck["model_config"] != dataclasses.asdict(mc) or ck["train_config"] != dataclasses.asdict(tc):
            raise SystemExit(f"{ckpt} was written with another config; use another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        step, tokens, elapsed = ck["step"], ck["tokens"], ck["elapsed"]
        _set_rng_state(ck["rng"])
        loss_state = ck["extra"].get("loss_window", (0.0, 0, 0))
        log(f"resumed at step {step} ({tokens} tokens)")
        # drop log rows written after the checkpoint, so the CSV stays consistent
        if csv_path.exists():
            rows = list(csv.reader(csv_path.open()))
            keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
            with csv_path.open("w", newline="") as f:
                csv.writer(f).writerows(keep)
    elif ckpt.exists():
        raise SystemExit(f"{ckpt} exists: pass --resume or use another --out")
    else:
        loss_state = (0.0, 0, 0)
        with csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(["step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss",
                                    "tok_per_s"])
    return step, tokens, elapsed, loss_state


def _finish(model, val_stream, tc, out, tok_path, result, emb, body, export, log) -> None:
    """The final evaluation, the exports (HF directory, .tpk) and final.json, into result."""
    vl, n = evaluate(model, val_stream, tc.seq_len)
    result.update(val_loss=vl, val_ppl=math.exp(vl), val_tokens=n,
                  params_embedding=emb, params_body=body)
    if export:
        hf = export_hf(model, out / "hf", tok_path)
        result["hf_dir"] = str(hf)
        tpk = export_tpk(hf, out / "model.tpk")
        if tpk is not None:
            result["tpk"] = str(tpk)
    (out / "final.json").write_text(json.dumps(result, indent=1))
    log(f"final val loss {vl:.4f} ppl {math.exp(vl):.3f} over {n} tokens -> {out}")


def train(mc: ModelConfig, tc: TrainConfig, out: Path, corpus: Path, resume: bool = False,
          max_seconds: float | None = None, log=print, export: bool = True) -> dict:
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tok_path, train_stream, val_stream = corpus_streams(corpus, mc.vocab_size)
    ckpt = out / "ckpt.pt"
    model = build_model(mc, tc.seed)
    opt = make_optimizer(model, tc)
    csv_path = out / "log.csv"
    step, tokens, elapsed, loss_state = _start_or_resume(ckpt, csv_path, model, opt, mc, tc, resume, log)
    (out / "config.json").write_text(json.dumps({"model": dataclasses.asdict(mc),
                                                 "train": dataclasses.asdict(tc)}, indent=1))
    emb, body = model.num_params()
    total_steps = max(1, tc.tokens // (tc.batch_size * tc.seq_len))
    peak = tc.lr if mc.quant != "none" else tc.lr_fp
    log(f"params: embedding {emb}, body {body}; {total_steps} steps of "
        f"{tc.batch_size}x{tc.seq_len} tokens; quant={mc.quant}; threads={torch.get_num_threads()}")
    model.train()
    t_last_eval = t_last_ckpt = time.time()
    t0 = time.time() - elapsed
    run_start = time.time()
    loss_acc, n_acc, tok_window = loss_state
    t_window = time.time()
    stopped = False
    timed = tc.time_budget_s > 0
    while step < total_steps:
        if timed:
            frac = (time.time() - t0) / tc.time_budget_s
            if frac >= 1.0:
                break
            lr, wd = lr_wd_frac(frac, step, tc, peak)
        else:
            lr, wd = lr_wd_at(step, total_steps, tc, peak)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd        # group 1 (norms) never decays
        x, y = batch_at(train_stream, step, tc.seed, tc.batch_size, tc.seq_len, mc.bos_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.autocast == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        tokens += x.numel()
        loss_acc += loss.item()
        n_acc += 1
        tok_window += x.numel()
        now = time.time()
        last = step == total_steps or (timed and time.time() - t0 >= tc.time_budget_s)
        if now - t_last_eval >= tc.eval_every_s or last or step == 1:
            vl, _ = evaluate(model, val_stream, tc.seq_len, tc.eval_tokens)
            tps = tok_window / max(1e-9, time.time() - t_window)
            elapsed = time.time() - t0
            with csv_path.open("a", newline="") as f:
                csv.writer(f).writerow([step, tokens, f"{elapsed:.1f}", f"{lr:.6g}",
                                        f"{loss_acc / n_acc:.5f}", f"{vl:.5f}", f"{tps:.1f}"])
            log(f"step {step}/{total_steps} tokens {tokens} lr {lr:.2e} train {loss_acc / n_acc:.4f} "
                f"val {vl:.4f} (ppl {math.exp(vl):.2f}) {tps:.0f} tok/s")
            loss_acc, n_acc, tok_window, t_window = 0.0, 0, 0, time.time()
            t_last_eval = time.time()
        stop = max_seconds is not None and time.time() - run_start > max_seconds and not last
        if time.time() - t_last_ckpt >= tc.ckpt_every_s or last or stop:
            save_checkpoint(ckpt, model, opt, step, tokens, time.time() - t0, mc, tc,
                            extra={"loss_window": (loss_acc, n_acc, tok_window)})
            t_last_ckpt = time.time()
        if stop:
            stopped = True
            break
    result = {"step": step, "tokens": tokens, "elapsed_s": time.time() - t0, "finished": not stopped}
    if not stopped:
        _finish(model, val_stream, tc, out, tok_path, result, emb, body, export, log)
    return result


def configs_from_args(args) -> tuple[ModelConfig, TrainConfig]:
    mk, tk = CONFIGS[args.config]
    mk = dict(mk)
    tk = dict(tk)
    for f in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
              "vocab_size", "quant"):
        v = getattr(args, f)
        if v is not None:
            mk[f] = v
    if args.hidden_size is not None and args.num_heads is None:
        mk["num_heads"] = mk["num_kv_heads"] = args.hidden_size // mk.get("head_dim", 64)
    for f in ("tokens", "lr", "lr_fp", "seed", "batch_size", "seq_len", "time_budget_s", "autocast"):
        v = getattr(args, f)
        if v is not None:
            tk[f] = v
    seq_len = tk.get("seq_len", TrainConfig.seq_len)
    mk["max_position"] = max(mk.get("max_position", ModelConfig.max_position), seq_len)
    return ModelConfig(**mk), TrainConfig(**tk)


def main(argv=None):
    ap = argparse.ArgumentParser(description="BitNet b1.58 quantization-aware training")
    ap.add_argument("--config", default="small", choices=sorted(CONFIGS))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quant", choices=QUANT_MODES)
    ap.add_argument("--hidden-size", dest="hidden_size", type=int)
    ap.add_argument("--intermediate-size", dest="intermediate_size", type=int)
    ap.add_argument("--num-layers", dest="num_layers", type=int)
    ap.add_argument("--num-heads", dest="num_heads", type=int)
    ap.add_argument("--num-kv-heads", dest="num_kv_heads", type=int)
    ap.add_argument("--vocab-size", dest="vocab_size", type=int)
    ap.add_argument("--tokens", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-fp", dest="lr_fp", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--batch-size", dest="batch_size", type=int)
    ap.add_argument("--seq-len", dest="seq_len", type=int)
    ap.add_argument("--time-budget", dest="time_budget_s", type=float,
                    help="run the LR/WD schedule on wall-clock seconds instead of steps")
    ap.add_argument("--autocast", choices=("none", "bf16"))
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="checkpoint and stop after this long (resume later)")
    ap.add_argument("--bench", type=int, default=0,
                    help="only time this many training steps and print tokens/s")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mc, tc = configs_from_args(args)
    if args.bench:
        return bench(mc, tc, args.corpus, args.bench)
    res = train(mc, tc, args.out, args.corpus, resume=args.resume, max_seconds=args.max_seconds,
                log=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True))
    print(json.dumps(res, indent=1))
    return 0


def bench(mc: ModelConfig, tc: TrainConfig, corpus: Path, steps: int) -> int:
    _, train_stream, _ = corpus_streams(corpus, mc.vocab_size)
    model = build_model(mc, tc.seed)
    opt = make_optimizer(model, tc)
    emb, body = model.num_params()
    times = []
    for step in range(steps + 1):
        x, y = batch_at(train_stream, step, tc.seed, tc.batch_size, tc.seq_len, mc.bos_id)
        t = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.autocast == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, mc.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times.append(time.time() - t)
    tps = tc.batch_size * tc.seq_len / (sum(times) / len(times))
    print(json.dumps({"hidden": mc.hidden_size, "layers": mc.num_layers,
                      "intermediate": mc.intermediate_size, "vocab": mc.vocab_size,
                      "quant": mc.quant, "params_embedding": emb, "params_body": body,
                      "tok_per_s": round(tps, 1), "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
