"""The quantizers, one per format: ternary absmean (the linears), per-row int8 and Q4 (the
lm_head). The converter and the synthetic-model generator both call these, so a file made
either way holds the same bytes for the same weights.

Q4 lm_head: 4-bit weights in groups of 128 with int sub-scales and one float per row.

Layout (csrc/ternary.h, "Q4 lm_head"): w[n, k] ~= row_scale[n] * sub[n, g] * (u[n, k] - 8) with
g = k // 128 and u in 0..15; packed [N, 64 G] holds byte j of group g = u[128g + j] | u[128g + 64 + j] << 4;
sub int16 [N, G] in 0..127; row_scale f32 [N]. The sub-scales are integers so every kernel
computes the same exact int32 per row in any order; one float multiply per row ends it.
The output head is not ternary: like llama.cpp's 6-bit head next to its ternary TQ2_0 layers,
a 4-bit head cuts its share of a decode step's bytes (int8: 39 % of the 2B shape; Q4: ~25 %).
"""
import numpy as np

VERSION = 2           # of the quantizer: cached q4 files made by another are remade
GROUP = 128
MAX_SUB = 127
MAX_K = 16384          # keeps the exact int32 accumulator in range (ternary.h, kQ4MaxK)
_ROWS_PER_CHUNK = 1024  # rows quantized at a time: bounds the float32 temporaries
STEP_CANDIDATES = (1.0, 0.95, 0.9, 0.85, 0.8)  # fractions of absmax / 7.5 tried per group


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
        # Each group's integer sub-scale: the candidate with the least squared error among
        # steps at and a little below absmax / 7.5 (clipping the few largest weights can pay
        # for finer levels everywhere else), as llama.cpp's quantizers search their scales.
        best_err = best_s = None
        for f in STEP_CANDIDATES:
            s = np.clip(np.ceil(step * f / d[:, None]), 0, MAX_SUB)   # (n, G)
            real = d[:, None] * s                                     # (n, G) stored step
            err = ((grp - (_levels(grp, real) - 8.0) * real[:, :, None]) ** 2).sum(axis=2)
            if best_err is None:
                best_err, best_s = err, s
            else:
                better = err < best_err
                best_err, best_s = np.where(better, err, best_err), np.where(better, s, best_s)
        s = best_s
        u = _levels(grp, d[:, None] * s)
        u = u.astype(np.uint8)
        packed[r0:r0 + len(rows)] = (u[:, :, :64] | (u[:, :, 64:] << 4)).reshape(len(rows), -1)
        sub[r0:r0 + len(rows)] = s
        row_scale[r0:r0 + len(rows)] = d
    return packed, sub, row_scale


def _levels(grp: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Nibbles u = clip(rint(w / step), -8, 7) + 8 of groups grp (n, G, 128) at steps real (n, G)."""
    r = real[:, :, None]
    return np.where(r > 0, np.clip(np.rint(grp / np.where(r > 0, r, 1)), -8, 7), 0) + 8.0


def dequantize(packed: np.ndarray, sub: np.ndarray, row_scale: np.ndarray, k: int) -> np.ndarray:
    """The f32 [N, K] matrix the Q4 tensors stand for."""
    n, g = sub.shape
    b = packed.reshape(n, g, GROUP // 2)
    u = np.concatenate([b & 15, b >> 4], axis=2).astype(np.float32) - 8.0   # (n, G, 128)
    w = u * sub[:, :, None].astype(np.float32) * row_scale[:, None, None]
    return w.reshape(n, g * GROUP)[:, :k]


# ---------------------------------------------------------------------------------------------
# ternary linears and the int8 / q4 heads, applied a chunk of rows at a time


def ternary_inv_scale(mean_abs: float) -> np.float32:
    """s = 1 / max(mean|W|, 1e-5) in float32, as transformers WeightQuant (integrations/bitnet.py)
    and 1bitLLM's weight_quant; the stored scale is 1 / s."""
    return np.float32(1.0) / np.float32(max(mean_abs, 1e-5))


def ternarize_rows(x: np.ndarray, inv_scale: np.float32) -> np.ndarray:
    """f32 rows -> int8 {-1, 0, 1}: clamp(rint(W * s), -1, 1)."""
    return np.clip(np.rint(x * inv_scale), -1, 1).astype(np.int8)


def int8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f32 [n, k] -> (int8 [n, k], f32 [n]): per-row absmax, w ~ q * scale[row] (a zero row gets
    scale 1.0); the int8 lm_head kernel computes (x @ q.T) * scale."""
    amax = np.abs(x).max(axis=1)
    s = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    return np.clip(np.rint(x / s[:, None]), -127, 127).astype(np.int8), s


HEAD_TENSORS = {"int8": ("lm_head.weight", "lm_head.scale"),
                "q4": ("lm_head.weight", "lm_head.sub", "lm_head.scale")}


def head_tensors(fmt: str, shape: tuple[int, int], chunks) -> dict:
    """The lm_head tensors of format fmt ("int8" | "q4") of a [vocab, hidden] matrix given as
    chunks: (row slice, f32 rows) pairs, so a big head is never one float32 copy."""
    n, k = shape
    if fmt == "int8":
        out = (np.empty((n, k), np.int8), np.empty(n, np.float32))
        quantize_chunk = int8_rows
    else:
        g = groups(k)
        out = (np.empty((n, g * GROUP // 2), np.uint8), np.empty((n, g), np.int16), np.empty(n, np.float32))
        quantize_chunk = quantize
    for rows, x in chunks:
        for dst, part in zip(out, quantize_chunk(x)):
            dst[rows] = part
    return dict(zip(HEAD_TENSORS[fmt], out))
