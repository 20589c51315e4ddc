"""Preallocated per-layer key/value cache (gpt-fast KVCache style), in one of three dtypes.

k[layer], v[layer]: [Hkv, ctx, D], C-contiguous, the layout kernels.attention reads, as
  "f32"   float32;
  "f16"   float16 (the default: half the memory, attention error ~1e-4 of f32's);
  "int8"  int8 rows with k_scale[layer], v_scale[layer] f32 [Hkv, ctx], one scale per token and
          kv head (x ~= scale * q, scale = max|x| / 127; csrc/ternary.h): (D + 4) / (4 D) of f32.
np.zeros maps untouched pages lazily, so resident memory grows with the positions used.
"""
from __future__ import annotations

import numpy as np

from engine import kernels as K

KV_DTYPES = ("f32", "f16", "int8")
DEFAULT_KV_DTYPE = "f16"
_NUMPY = {"f32": np.float32, "f16": np.float16, "int8": np.int8}


def check_kv_dtype(dtype: str) -> str:
    """dtype itself if it names a cache dtype, else a ValueError naming the choices."""
    if dtype not in KV_DTYPES:
        raise ValueError(f"unknown KV cache dtype {dtype!r} (expected one of {', '.join(KV_DTYPES)})")
    return dtype


class ContextError(ValueError):
    """Prompt plus requested tokens do not fit in the context (a user error)."""


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, ctx: int, head_dim: int,
                 dtype: str = DEFAULT_KV_DTYPE):
        if ctx < 1:
            raise ValueError(f"context must be at least 1 token, got {ctx}")
        self.ctx, self.dtype = ctx, check_kv_dtype(dtype)
        shape = (n_layers, n_kv_heads, ctx, head_dim)
        self.k = np.zeros(shape, _NUMPY[dtype])  # (L, Hkv, ctx, D)
        self.v = np.zeros(shape, _NUMPY[dtype])  # (L, Hkv, ctx, D)
        self.k_scale = self.v_scale = None       # int8: f32 (L, Hkv, ctx)
        if dtype == "int8":
            self.k_scale = np.zeros(shape[:3], np.float32)
            self.v_scale = np.zeros(shape[:3], np.float32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.k, self.v, self.k_scale, self.v_scale) if a is not None)

    def check_room(self, n_prompt: int, n_new: int = 0) -> None:
        """Raise ContextError unless n_prompt + n_new positions fit."""
        if n_prompt + n_new > self.ctx:
            what = f"prompt ({n_prompt} tokens)"
            if n_new:
                what += f" + {n_new} new tokens = {n_prompt + n_new}"
            raise ContextError(f"{what} exceeds the context of {self.ctx} tokens")

    def check_span(self, pos: int, t: int) -> None:
        """Raise ContextError unless positions pos .. pos + t - 1 exist."""
        if pos < 0 or pos + t > self.ctx:
            raise ContextError(f"positions {pos}..{pos + t - 1} exceed the context of {self.ctx} tokens")

    def update(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k, v: f32 [T, Hkv, D] of positions pos .. pos + T - 1."""
        t = k.shape[0]
        self.check_span(pos, t)
        if self.k_scale is not None:  # int8: quantize each (token, head) row into place
            K.kv_store_int8(k, self.k[layer], self.k_scale[layer], pos)
            K.kv_store_int8(v, self.v[layer], self.v_scale[layer], pos)
            return
        # f32 / f16: numpy's assignment converts (f16: round to nearest even, as torch's .half())
        if t == 1:  # decode: the cheapest indexing (this runs once per layer per token)
            self.k[layer, :, pos] = k[0]
            self.v[layer, :, pos] = v[0]
            return
        # (T, Hkv, D) -> (Hkv, T, D): a strided copy into the cache, no temporary.
        self.k[layer, :, pos:pos + t].transpose(1, 0, 2)[...] = k
        self.v[layer, :, pos:pos + t].transpose(1, 0, 2)[...] = v

    def attend(self, layer: int, q: np.ndarray, pos: int, out: np.ndarray) -> None:
        """out f32 [T, Hq, D] = causal attention of q f32 [T, Hq, D] (positions pos ..) over this
        layer's cached positions 0 .. pos + T - 1 (kernels.attention, any cache dtype)."""
        if self.k_scale is None:
            K.attention(q, self.k[layer], self.v[layer], pos, out=out)
        else:
            K.attention(q, self.k[layer], self.v[layer], pos, out=out,
                        k_scale=self.k_scale[layer], v_scale=self.v_scale[layer])
