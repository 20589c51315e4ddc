"""Preallocated per-layer key/value cache (gpt-fast KVCache style).

k[layer], v[layer]: f32 [Hkv, ctx, D], C-contiguous, the layout kernels.attention reads.
np.zeros maps untouched pages lazily, so resident memory grows with the positions used.
"""
from __future__ import annotations

import numpy as np


class ContextError(ValueError):
    """Prompt plus requested tokens do not fit in the context (a user error)."""


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, ctx: int, head_dim: int):
        if ctx < 1:
            raise ValueError(f"context must be at least 1 token, got {ctx}")
        self.ctx = ctx
        self.k = np.zeros((n_layers, n_kv_heads, ctx, head_dim), np.float32)  # (L, Hkv, ctx, D)
        self.v = np.zeros((n_layers, n_kv_heads, ctx, head_dim), np.float32)  # (L, Hkv, ctx, D)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

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
        if t == 1:  # decode: the cheapest indexing (this runs once per layer per token)
            self.k[layer, :, pos] = k[0]
            self.v[layer, :, pos] = v[0]
            return
        # (T, Hkv, D) -> (Hkv, T, D): a strided copy into the cache, no temporary.
        self.k[layer, :, pos:pos + t].transpose(1, 0, 2)[...] = k
        self.v[layer, :, pos:pos + t].transpose(1, 0, 2)[...] = v
