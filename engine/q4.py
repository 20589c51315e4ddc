"""Q4 lm_head: 4-bit weights in groups of 128 with int sub-scales and one float per row.

Layout (csrc/ternary.h, "Q4 lm_head"): w[n, k] ~= row_scale[n] * sub[n, g] * (u[n, k] - 8) with
g = k // 128 and u in 0..15; packed [N, 64 G] holds byte j of group g = u[128g + j] | u[128g + 64 + j] << 4;
sub int16 [N, G] in 0..127; row_scale f32 [N]. The sub-scales are integers so every kernel
computes the same exact int32 per row in any order; one float multiply per row ends it.
The output head is not ternary: like llama.cpp's 6-bit head next to its ternary TQ2_0 layers,
a 4-bit head cuts its share of a decode step's bytes (int8: 39 % of the 2B shape; Q4: ~25 %).
"""
import numpy as np

GROUP = 128
MAX_SUB = 127
MAX_K = 16384          # keeps the exact int32 accumulator in range (ternary.h, kQ4MaxK)
_ROWS_PER_CHUNK = 4096  # rows quantized at a time: bounds the float32 temporaries


def groups(k: int) -> int:
    return -(-k // GROUP)


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f16/f32 [N, K] -> (packed uint8 [N, 64 G], sub int16 [N, G], row_scale f32 [N])."""
    n, k = w.shape
    if not 1 <= k <= MAX_K:
        raise ValueError(f"q4 rows need 1 <= K <= {MAX_K}, got K = {k}")
    g = groups(k)
    packed = np.empty((n, g * GROUP // 2), np.uint8)
    sub = np.empty((n, g), np.int16)
    row_scale = np.empty(n, np.float32)
    for r0 in range(0, n, _ROWS_PER_CHUNK):
        rows = np.zeros((min(n - r0, _ROWS_PER_CHUNK), g * GROUP), np.float32)
        rows[:, :k] = w[r0:r0 + len(rows)]
        grp = rows.reshape(len(rows), g, GROUP)                       # (n, G, 128)
        # Levels -8..7 reach +-7.5 steps within half a step: step = absmax / 7.5 per group.
        step = np.abs(grp).max(axis=2) / 7.5                          # (n, G)
        d = np.maximum(step.max(axis=1), 1e-12) / MAX_SUB             # (n,) row scale
        # Sub-scales round up, so the stored step d * s is never smaller than the group's and
        # no weight clips beyond half a step; weights are then rounded against that stored step.
        s = np.clip(np.ceil(step / d[:, None]), 0, MAX_SUB)           # (n, G) integer sub-scales
        real = (d[:, None] * s)[:, :, None]
        u = np.where(real > 0, np.clip(np.rint(grp / np.where(real > 0, real, 1)), -8, 7), 0) + 8
        u = u.astype(np.uint8)
        packed[r0:r0 + len(rows)] = (u[:, :, :64] | (u[:, :, 64:] << 4)).reshape(len(rows), -1)
        sub[r0:r0 + len(rows)] = s
        row_scale[r0:r0 + len(rows)] = d
    return packed, sub, row_scale


def dequantize(packed: np.ndarray, sub: np.ndarray, row_scale: np.ndarray, k: int) -> np.ndarray:
    """The f32 [N, K] matrix the Q4 tensors stand for."""
    n, g = sub.shape
    b = packed.reshape(n, g, GROUP // 2)
    u = np.concatenate([b & 15, b >> 4], axis=2).astype(np.float32) - 8.0   # (n, G, 128)
    w = u * sub[:, :, None].astype(np.float32) * row_scale[:, None, None]
    return w.reshape(n, g * GROUP)[:, :k]
