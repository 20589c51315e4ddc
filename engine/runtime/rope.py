"""RoPE frequency tables for every rope_scaling type transformers applies to Llama-family models.

Each inv_freq function mirrors the transformers 5.25 function named in it
(modeling_rope_utils.py), step by step in float32 as torch computes it, so cos/sin match
transformers' LlamaRotaryEmbedding.forward: freqs = float32(pos) * inv_freq,
cos = cos(freqs) * attention_factor, sin likewise (the factor is yarn's / longrope's "mscale").

The .tpk config key "rope_scaling" (engine/formats/tpk.py check_config) holds the resolved
parameters; absent or null means plain RoPE. Types:
  linear       inv_freq / factor                          (_compute_linear_scaling_rope_parameters)
  dynamic      NTK: theta grows with the sequence length   (_compute_dynamic_ntk_parameters)
  yarn         ramp between interpolated / extrapolated    (_compute_yarn_parameters)
  llama3       wavelength-banded division by factor       (_compute_llama3_parameters)
  longrope     short / long per-dim factors                (_compute_longrope_parameters)
  freq_factors inv_freq / factors[i], llama.cpp's rope_freqs tensor (Llama-3.1 GGUFs carry it)

Sequence-length dependence (modeling_rope_utils.dynamic_rope_update): transformers takes
seq_len = max(position_ids) + 1 of each forward call. "dynamic" recomputes inv_freq with that
seq_len once it exceeds max_position_embeddings; "longrope" switches to the long factors once it
exceeds original_max_position_embeddings. Keys already in the KV cache keep the rotation they
got. The engine does the same per call: a forward over positions p .. p+T-1 (prefill, however
it is chunked internally) uses seq_len = p + T, a decode step at position p uses p + 1, so a
prefill-then-decode run reproduces transformers' generate(). (transformers also keeps the largest
dynamic seq_len seen in a model object until a call shorter than the original context resets it;
the engine computes from each call's own length, i.e. a fresh transformers model per sequence.)
"""
from __future__ import annotations

import math

import numpy as np

TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope", "freq_factors")
SEQ_DEPENDENT = ("dynamic", "longrope")

f32 = np.float32


def _pow(base, exponent: np.ndarray) -> np.ndarray:
    """float32 base ** float32 exponent, correctly rounded (as torch's float32 pow is here)."""
    return (np.float64(f32(base)) ** exponent.astype(np.float64)).astype(np.float32)


def _shape(dim: int) -> np.ndarray:
    """torch.arange(0, dim, 2, dtype=int64).float() / dim, in float32."""
    return np.arange(0, dim, 2, dtype=np.float32) / f32(dim)


def default_inv_freq(dim: int, theta: float) -> np.ndarray:
    """LlamaRotaryEmbedding.compute_default_rope_parameters: 1 / theta ** (arange(0, D, 2) / D)."""
    return f32(1.0) / _pow(theta, _shape(dim))


def inv_freq_and_factor(dim: int, theta: float, rs: dict | None, seq_len: int | None = None):
    """-> (inv_freq f32 [dim/2], attention_factor) for rope_scaling rs at sequence length seq_len."""
    kind = (rs or {}).get("rope_type", "default")
    if kind == "default":
        return default_inv_freq(dim, theta), 1.0
    if kind == "linear":  # _compute_linear_scaling_rope_parameters: inv_freq /= factor
        return default_inv_freq(dim, theta) / f32(rs["factor"]), 1.0
    if kind == "freq_factors":  # llama.cpp ggml_rope_ext freq_factors: theta_i / ff[i]
        return default_inv_freq(dim, theta) / np.asarray(rs["factors"], np.float32), 1.0
    if kind == "dynamic":
        return _dynamic(dim, theta, rs, seq_len), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, rs), float(rs["attention_factor"])
    if kind == "llama3":
        return _llama3(dim, theta, rs), 1.0
    if kind == "longrope":  # _compute_longrope_parameters
        orig = rs["original_max_position_embeddings"]
        ext = rs["long_factor"] if seq_len and seq_len > orig else rs["short_factor"]
        return f32(1.0) / (np.asarray(ext, np.float32) * _pow(theta, _shape(dim))), float(rs["attention_factor"])
    raise ValueError(f"unknown rope_scaling type {kind!r}")


def _dynamic(dim, theta, rs, seq_len):
    """_compute_dynamic_ntk_parameters. At or below max_position_embeddings transformers keeps
    the init-time inv_freq (seq_len None -> max_position_embeddings: base unchanged); beyond it,
    dynamic_frequency_update passes seq_len as a tensor, so the base is float32 arithmetic:
    base * ((factor * seq_len / mpe) - (factor - 1)) ** (dim / (dim - 2))."""
    mpe, factor = int(rs["max_position_embeddings"]), float(rs["factor"])
    if seq_len is None or seq_len <= mpe:
        return default_inv_freq(dim, theta)
    x = f32(f32(factor) * f32(seq_len)) / f32(mpe)
    x = f32(x - f32(factor - 1))
    x = f32(np.float64(x) ** np.float64(f32(dim / (dim - 2))))
    base = f32(f32(theta) * x)
    return f32(1.0) / _pow(base, _shape(dim))


def _yarn(dim, theta, rs):
    """_compute_yarn_parameters (the attention_factor is resolved by the converter)."""
    factor, orig = float(rs["factor"]), rs["original_max_position_embeddings"]
    beta_fast, beta_slow = float(rs.get("beta_fast") or 32), float(rs.get("beta_slow") or 1)

    def correction_dim(num_rotations):
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # linear_ramp_factor: prevent singularity
    pos_freqs = _pow(theta, _shape(dim))
    extrapolation = f32(1.0) / pos_freqs
    interpolation = f32(1.0) / (f32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - f32(low)) / f32(high - low), 0, 1).astype(np.float32)
    extra_factor = f32(1) - ramp
    return (interpolation * (f32(1) - extra_factor) + extrapolation * extra_factor).astype(np.float32)


def _llama3(dim, theta, rs):
    """_compute_llama3_parameters."""
    inv_freq = default_inv_freq(dim, theta)
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = f32(2 * math.pi) / inv_freq
    inv_llama = np.where(wavelen > f32(low_wavelen), inv_freq / f32(factor), inv_freq).astype(np.float32)
    smooth = ((f32(old) / wavelen - f32(lo)) / f32(hi - lo)).astype(np.float32)
    smoothed = ((f32(1) - smooth) * inv_llama / f32(factor) + smooth * inv_llama).astype(np.float32)
    medium = ~(wavelen < f32(high_wavelen)) & ~(wavelen > f32(low_wavelen))
    return np.where(medium, smoothed, inv_llama).astype(np.float32)


def tables(inv_freq: np.ndarray, attention_factor: float, positions: np.ndarray):
    """cos, sin f32 [len(positions), D/2]: freqs = f32(pos) * inv_freq in float32, then
    cos/sin (cat(freqs, freqs) in transformers repeats the same half), times the factor."""
    freqs = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    cos = np.cos(freqs.astype(np.float64)).astype(np.float32)
    sin = np.sin(freqs.astype(np.float64)).astype(np.float32)
    if attention_factor != 1.0:
        cos *= f32(attention_factor)
        sin *= f32(attention_factor)
    return cos, sin


class Rope:
    """The cos/sin rows a pass needs. Static types: one table over the context, built once.
    dynamic / longrope: rows computed for the pass's sequence length (module docstring)."""

    def __init__(self, head_dim: int, theta: float, rope_scaling: dict | None, ctx: int):
        self.dim, self.theta, self.rs = head_dim, theta, rope_scaling
        self.kind = (rope_scaling or {}).get("rope_type", "default")
        inv, af = inv_freq_and_factor(head_dim, theta, rope_scaling, None)
        self.cos, self.sin = tables(inv, af, np.arange(ctx))  # short / unscaled table
        self.seq_dependent = self.kind in SEQ_DEPENDENT
        self._long = None
        if self.kind == "longrope":  # both tables are fixed: pick by seq_len
            inv, af = inv_freq_and_factor(head_dim, theta, rope_scaling,
                                          rope_scaling["original_max_position_embeddings"] + 1)
            self._long = tables(inv, af, np.arange(ctx))

    def _threshold(self):
        return (self.rs["max_position_embeddings"] if self.kind == "dynamic"
                else self.rs["original_max_position_embeddings"])

    def rows(self, positions: np.ndarray, seq_len: int):
        """cos, sin f32 [len(positions), D/2] for these positions of a call of length seq_len."""
        if not self.seq_dependent or seq_len <= self._threshold():
            return self.cos[positions], self.sin[positions]
        if self._long is not None:
            return self._long[0][positions], self._long[1][positions]
        inv, af = inv_freq_and_factor(self.dim, self.theta, self.rs, seq_len)
        return tables(inv, af, np.asarray(positions))

    def span(self, pos: int, t: int, seq_len: int):
        """cos, sin rows for positions pos .. pos + t - 1 (views of the table when static)."""
        if not self.seq_dependent or seq_len <= self._threshold():
            return self.cos[pos:pos + t], self.sin[pos:pos + t]
        return self.rows(np.arange(pos, pos + t), seq_len)
