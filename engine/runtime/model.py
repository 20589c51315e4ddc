"""The transformer forward pass over a .tpk (llama2.c / gpt-fast style: one file, explicit state).

Graphs (selected by config fields, docs/CONTRACTS.md):
  BitNet (transformers models/bitnet/modeling_bitnet.py, integrations/bitnet.py AutoBitLinear):
    x += o( attn_sub_norm( attention( rope(q(n)), rope(k(n)), v(n) ) ) ),  n = attn_norm(x)
    x += down( ffn_sub_norm( relu(gate(n))**2 * up(n) ) ),                  n = ffn_norm(x)
    ternary linear: y = int8(x) @ W.T / act_scale * weight_scale          (scale_mode "mul")
  Llama + BitLinear (integrations/bitnet.py BitLinear.post_quant_process): no sub-norms, silu,
    y = int8(x) @ W.T / (act_scale * weight_scale)                          (scale_mode "div");
    with quantization_config use_rms_norm every projection first applies its own RMSNorm
    (`<proj>.in_norm`, eps proj_norm_eps; BitLinear.rms_norm is a LlamaRMSNorm).
  Plain Llama (weight_format "f16"): the same graph with f16 weights through kernels.f16_linear.
RMSNorm is float32 throughout (BitNetRMSNorm: hidden.to(float32) * rsqrt(mean(h^2) + eps),
then weight * hidden.to(input_dtype); our activations are float32, so no cast is lost).
Activations stay float32 between kernels; every linear is one kernel call writing into a
preallocated buffer. Prefill runs T tokens per call (GEMM), decode one (GEMV).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from engine import kernels as K
from engine.formats import tpk as tpk_module
from engine.runtime import kernel_choice
from engine.runtime.kvcache import DEFAULT_KV_DTYPE, KVCache
from engine.runtime.rope import Rope

DEFAULT_CTX = 4096     # when neither ctx nor a smaller max_position is given
PREFILL_CHUNK = 256    # prompt tokens per batched pass: bounds activation memory


@dataclass(frozen=True)
class ModelArgs:
    architecture: str      # "bitnet" | "llama"
    dim: int               # hidden_size
    ffn_dim: int           # intermediate_size
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position: int
    norm_eps: float        # rms_norm_eps
    rope_theta: float
    hidden_act: str        # "relu2" | "silu"
    sub_norms: bool
    weight_format: str     # "t2" | "t1" | "tl2" | "f16"
    scale_mode: str        # "mul" | "div"
    proj_norm_eps: float | None
    rope_scaling: dict | None = None   # engine/runtime/rope.py; None: plain RoPE

    @classmethod
    def from_config(cls, c: dict) -> "ModelArgs":
        a = cls(c["architecture"], c["hidden_size"], c["intermediate_size"], c["num_layers"],
                c["num_heads"], c["num_kv_heads"], c["head_dim"], c["vocab_size"], c["max_position"],
                float(c["rms_norm_eps"]), float(c["rope_theta"]), c["hidden_act"], bool(c["sub_norms"]),
                c["weight_format"], c.get("scale_mode", "mul"), c.get("proj_norm_eps"), c.get("rope_scaling"))
        if a.hidden_act not in ("relu2", "silu") or a.weight_format not in tpk_module.WEIGHT_FORMATS:
            raise ValueError(f"unsupported hidden_act {a.hidden_act!r} / weight_format {a.weight_format!r}")
        if a.n_heads % a.n_kv_heads or a.head_dim % 2 or c.get("rope_style", "neox") != "neox":
            raise ValueError("need num_heads % num_kv_heads == 0, even head_dim and rope_style 'neox'")
        return a


def rope_tables(head_dim: int, theta: float, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: f32 [ctx, head_dim/2] as transformers' default RoPE computes them
    (BitNetRotaryEmbedding.compute_default_rope_parameters and .forward):
    inv_freq = 1 / theta ** (arange(0, D, 2) / D) in float32 (the pow is correctly rounded,
    as torch's is), freqs = float32(pos) * inv_freq in float32, then cos/sin. cat(freqs, freqs)
    there repeats the same half, hence D/2 columns here."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    freqs = np.arange(ctx, dtype=np.float32)[:, None] * inv_freq[None, :]  # (ctx, D/2) f32
    return (np.cos(freqs.astype(np.float64)).astype(np.float32),
            np.sin(freqs.astype(np.float64)).astype(np.float32))


class Linear:
    """One projection: packed ternary weight + scalar scale, or an f16 weight; optional in_norm."""

    def __init__(self, t: dict, name: str, k: int, a: ModelArgs):
        self.weight = t[name + ".weight"]       # u8 [N, row_bytes] or f16 [N, K]
        self.k = k
        self.scale = float(t[name + ".scale"][0]) if a.weight_format != "f16" else 1.0
        self.in_norm = t.get(name + ".in_norm")  # f32 [K] or None
        self.packed = {a.weight_format: self.weight}     # layout -> weights (runtime/kernel_choice.py)
        self.plan = (a.weight_format,) * len(kernel_choice.BUCKETS)  # layout per M bucket
        self.fused = {}  # layout -> (packed list, scales) of the fused call this Linear leads


class Layer:
    def __init__(self, t: dict, i: int, a: ModelArgs):
        p = f"layers.{i}."
        qd = a.n_heads * a.head_dim
        self.attn_norm, self.ffn_norm = t[p + "attn_norm"], t[p + "ffn_norm"]       # f32 [dim]
        self.q, self.k, self.v = (Linear(t, p + f"attn.{n}", a.dim, a) for n in "qkv")
        self.o = Linear(t, p + "attn.o", qd, a)
        self.gate, self.up = (Linear(t, p + f"mlp.{n}", a.dim, a) for n in ("gate", "up"))
        self.down = Linear(t, p + "mlp.down", a.ffn_dim, a)
        self.attn_sub_norm = t[p + "attn.sub_norm"] if a.sub_norms else None      # f32 [dim]
        self.mlp_sub_norm = t[p + "mlp.sub_norm"] if a.sub_norms else None        # f32 [ffn_dim]


def make_buffers(a: ModelArgs, t: int) -> SimpleNamespace:
    f = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    qd, kvd = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    b = SimpleNamespace(
        h=f(t, a.dim),                         # (T, dim) residual stream
        q=f(t, qd), k=f(t, kvd), v=f(t, kvd),  # (T, Hq*D), (T, Hkv*D)
        att=f(t, a.n_heads, a.head_dim),       # (T, Hq, D) attention output
        o=f(t, a.dim),                         # (T, dim) o_proj / down_proj output
        gate=f(t, a.ffn_dim), up=f(t, a.ffn_dim), tmp=f(t, a.ffn_dim),  # (T, ffn_dim)
        norm={d: f(t, d) for d in {a.dim, qd, a.ffn_dim}},              # (T, d) rmsnorm outputs
        qi8={d: np.zeros((t, d), np.int8) for d in {a.dim, qd, a.ffn_dim}},  # (T, d) int8 acts
        act_scale=f(t),                        # (T,)
    )
    return b


def rows(b: SimpleNamespace, t: int) -> SimpleNamespace:
    """The first t rows of every buffer (views: leading rows stay C-contiguous)."""
    return SimpleNamespace(**{k: ({d: x[:t] for d, x in v.items()} if isinstance(v, dict) else v[:t])
                              for k, v in vars(b).items()})


def head_linear(t: dict, embed: np.ndarray):
    """The lm_head as fn(x f32 [T, dim], out f32 [T, vocab]), by the tensors the file holds."""
    w = t.get("lm_head.weight")
    if "lm_head.sub" in t:                                  # q4: engine/quant.py
        sub, scale = t["lm_head.sub"], t["lm_head.scale"]
        return lambda x, out: K.q4_linear(w, sub, scale, x, out=out)
    if "lm_head.scale" in t:                                # int8, one scale per row
        scale = t["lm_head.scale"]
        return lambda x, out: K.int8_linear(w, scale, x, out=out)
    if w is None and embed.dtype == np.float32:             # tied, exact f32 embedding
        return lambda x, out: np.matmul(x, embed.T, out=out)
    if w is None:
        if embed.dtype != np.float16:
            raise ValueError("tied head needs an f16/f32 embed or an lm_head.weight tensor")
        w = embed                                           # tied
    return lambda x, out: K.f16_linear(w, x, out=out)


class Model:
    def __init__(self, tpk, threads: int | None = None, ctx: int | None = None, kernels=None,
                 kv_dtype: str = DEFAULT_KV_DTYPE):
        if isinstance(tpk, (str, os.PathLike)):
            tpk = tpk_module.read(tpk)
        self.tpk = tpk
        t = tpk.tensors
        self.args = a = ModelArgs.from_config(tpk.config)
        if threads:
            K.set_threads(int(threads))
        self.ctx = int(ctx or min(a.max_position, DEFAULT_CTX))
        self.embed = t["embed"]                                          # f16/f32 [vocab, dim]
        self.layers = [Layer(t, i, a) for i in range(a.n_layers)]
        self.norm = t["norm"]                                            # f32 [dim]
        self.head_linear = head_linear(t, self.embed)                   # (x [T, dim], out [T, vocab])
        self.rope = Rope(a.head_dim, a.rope_theta, a.rope_scaling, self.ctx)
        self.cos, self.sin = self.rope.cos, self.rope.sin                # f32 [ctx, D/2]
        self.cache = KVCache(a.n_layers, a.n_kv_heads, self.ctx, a.head_dim, kv_dtype)  # f32/f16/int8
        self.ternary, self.divide = a.weight_format != "f16", a.scale_mode == "div"
        self.kernel_plan = self.choose_kernels(kernels)  # kernels: kernel_choice.Settings or None
        self.buf1 = make_buffers(a, 1)                                   # decode: T = 1
        self.bufn = None                                                 # prefill, made on first use
        self.logits1 = np.zeros((1, a.vocab_size), np.float32)          # (1, vocab)

    def choose_kernels(self, settings=None):
        """(Re)choose each linear's layout per token-count bucket for the active ISA and thread
        count (runtime/kernel_choice.py; settings None: from the environment)."""
        for L in getattr(self, "layers", ()):  # the fused calls' arguments follow the new plan
            for lin in (L.q, L.k, L.v, L.o, L.gate, L.up, L.down):
                lin.fused = {}
        return kernel_choice.choose(self, settings) if self.ternary else None

    # -- one batch of T tokens at positions pos .. pos + T - 1 --------------------------------
    def _project(self, x, norm, linears, outs, b):
        """outs[i] = linears[i](rmsnorm(x, norm)) (norm None: x itself). x: f32 [T, Kin]."""
        a, d = self.args, x.shape[1]
        fmt = linears[0].plan[kernel_choice.bucket_index(x.shape[0])]  # the group's layout at this M
        if not self.ternary:
            if norm is not None:
                x = K.rmsnorm(x, norm, a.norm_eps, out=b.norm[d])
            K.f16_linear_fused([lin.weight for lin in linears], x, outs=list(outs))
            return
        if a.proj_norm_eps is not None:  # per-projection RMSNorm, then quantize (BitLinear.forward)
            if norm is not None:
                x = K.rmsnorm(x, norm, a.norm_eps, out=b.norm[d])
            for lin, out in zip(linears, outs):
                q, s = K.rmsnorm_quantize_rows(x, lin.in_norm, a.proj_norm_eps, q=b.qi8[d], act_scale=b.act_scale)
                K.ternary_linear(fmt, lin.packed[fmt], lin.k, q, s, lin.scale, self.divide, out=out)
            return
        if norm is not None:  # fused rmsnorm + absmax int8 quantization, shared by q/k/v and gate/up
            q, s = K.rmsnorm_quantize_rows(x, norm, a.norm_eps, q=b.qi8[d], act_scale=b.act_scale)
        else:
            q, s = K.quantize_rows(x, q=b.qi8[d], act_scale=b.act_scale)
        # q/k/v and gate/up share their input: one fused call, one wake of the thread pool.
        # Its weight and scale lists are made once per layout (this runs 4x per layer per token).
        args = linears[0].fused.get(fmt)
        if args is None:
            args = linears[0].fused[fmt] = ([lin.packed[fmt] for lin in linears], [lin.scale for lin in linears])
        K.ternary_linear_fused(fmt, args[0], linears[0].k, q, s, args[1], self.divide, outs=outs)

    def run_layers(self, b, t: int, cos, sin, spans) -> None:
        """All layers over the first t rows of the buffers b (make_buffers / rows). Public: the
        second driver of the model, Batch, runs its rows through it. cos/sin: f32 [t, D/2], each row's
        own position. spans: (cache, r0, r1, pos): rows r0..r1 are one sequence's tokens at
        positions pos.. in that KVCache (one span for a plain pass; one per request in a batch)."""
        a = self.args
        q3 = b.q.reshape(t, a.n_heads, a.head_dim)                       # (T, Hq, D) views
        k3 = b.k.reshape(t, a.n_kv_heads, a.head_dim)                    # (T, Hkv, D)
        v3 = b.v.reshape(t, a.n_kv_heads, a.head_dim)
        att2 = b.att.reshape(t, a.n_heads * a.head_dim)                  # (T, Hq*D)
        for i, L in enumerate(self.layers):
            self._project(b.h, L.attn_norm, (L.q, L.k, L.v), (b.q, b.k, b.v), b)
            K.rope_neox(q3, cos, sin)
            K.rope_neox(k3, cos, sin)
            for cache, r0, r1, pos in spans:
                cache.update(i, pos, k3[r0:r1], v3[r0:r1])
                cache.attend(i, q3[r0:r1], pos, b.att[r0:r1])
            self._project(att2, L.attn_sub_norm, (L.o,), (b.o,), b)
            b.h += b.o
            self._mlp(L, b)

    def _pass(self, b, pos: int, t: int, seq_len: int) -> None:
        """One sequence's tokens at positions pos .. pos + t - 1 through all layers; seq_len:
        the length of the whole call (dynamic / longrope RoPE depend on it, runtime/rope.py)."""
        cos, sin = self.rope.span(pos, t, seq_len)
        self.run_layers(b, t, cos, sin, ((self.cache, 0, t, pos),))

    def _mlp(self, L: Layer, b) -> None:
        """b.h += down(sub_norm(act(gate(n)) * up(n))), n = ffn_norm(b.h); act relu^2 or silu."""
        a = self.args
        self._project(b.h, L.ffn_norm, (L.gate, L.up), (b.gate, b.up), b)
        if a.hidden_act == "relu2":                                  # relu(g)**2 * u
            np.maximum(b.gate, 0, out=b.gate)
            np.multiply(b.gate, b.gate, out=b.gate)
        else:                                                        # silu(g) * u = g / (1 + e^-g) * u
            np.negative(b.gate, out=b.tmp)
            np.exp(b.tmp, out=b.tmp)
            b.tmp += 1
            np.divide(b.gate, b.tmp, out=b.gate)
        b.gate *= b.up
        self._project(b.gate, L.mlp_sub_norm, (L.down,), (b.o,), b)
        b.h += b.o

    def head(self, h, out, b) -> None:
        """out f32 [T, vocab] = lm_head(rmsnorm(h)), h f32 [T, dim]; b: buffers (make_buffers)."""
        x = K.rmsnorm(h, self.norm, self.args.norm_eps, out=b.norm[self.args.dim][:h.shape[0]])
        self.head_linear(x, out)

    # -- public ------------------------------------------------------------------------------
    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode one token at position pos -> f32 [vocab] (a reused buffer: valid until the
        next call). The hot loop: no numpy allocation besides kernel-returned int8 activations."""
        b = self.buf1
        if not 0 <= token < self.args.vocab_size:
            raise ValueError(f"token id {token} out of range [0, {self.args.vocab_size})")
        self.cache.check_span(pos, 1)
        b.h[0] = self.embed[token]
        with np.errstate(over="ignore"):
            self._pass(b, pos, 1, pos + 1)
        self.head(b.h, self.logits1, b)
        return self.logits1[0]

    def forward(self, ids, start_pos: int = 0, last_only: bool = False) -> np.ndarray:
        """Logits f32 [T, vocab] for ids at positions start_pos .. start_pos + T - 1 (new array),
        or f32 [1, vocab] for the last one only. Fills the KV cache at those positions."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        t = ids.shape[0]
        a = self.args
        if t == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= a.vocab_size:
            raise ValueError(f"token ids must be in [0, {a.vocab_size})")
        if start_pos == 0:
            self.cache.check_room(t)
        self.cache.check_span(start_pos, t)
        if t == 1:
            return self.step(int(ids[0]), start_pos)[None].copy()
        if self.bufn is None:
            self.bufn = make_buffers(a, min(PREFILL_CHUNK, self.ctx))
        logits = np.empty((1 if last_only else t, a.vocab_size), np.float32)
        n = self.bufn.h.shape[0]
        for c0 in range(0, t, n):
            c1 = min(c0 + n, t)
            b = rows(self.bufn, c1 - c0)
            b.h[:] = self.embed[ids[c0:c1]]
            with np.errstate(over="ignore"):
                self._pass(b, start_pos + c0, c1 - c0, start_pos + t)
            if not last_only:
                self.head(b.h, logits[c0:c1], b)
            elif c1 == t:
                self.head(b.h[-1:], logits, b)
        return logits
