"""The Q4 lm_head: kernels bit for bit against an exact numpy model of the contract
(csrc/ternary.h) on every ISA, odd sizes and thread counts; the quantizer's layout and error;
bad input."""
import numpy as np
import pytest

from engine import kernels, quant as q4

SIZES = [(1, 1), (3, 5), (17, 127), (31, 128), (33, 129), (96, 255), (200, 1003), (37, 2560)]


def rng(*seed):
    return np.random.default_rng(list(seed))


def reference(packed, sub, row_scale, x):
    """q4_linear by its definition: absmax int8 tokens, exact integer dot, one float epilogue."""
    m, k = x.shape
    n, g = sub.shape
    q = np.zeros((m, g * q4.GROUP), np.int64)
    act = np.empty(m, np.float32)
    for i in range(m):
        act[i] = np.float32(127.0) / np.float32(max(np.abs(x[i]).max(), np.float32(1e-5)))
        q[i, :k] = np.clip(np.rint(x[i] * act[i]), -128, 127)
    b = packed.reshape(n, g, 64).astype(np.int64)
    u = np.concatenate([b & 15, b >> 4], axis=2) - 8                       # (n, G, 128)
    dots = np.einsum("ngk,mgk->mng", u, q.reshape(m, g, q4.GROUP))          # (m, n, G)
    acc = (dots * sub[None].astype(np.int64)).sum(-1)
    assert np.abs(acc).max(initial=0) < 2**31
    return acc.astype(np.int32).astype(np.float32) / act[:, None] * row_scale[None, :]


@pytest.mark.parametrize("m", [1, 2, 7])
def test_q4_linear_matches_definition(isa, m):
    for n, k in SIZES:
        r = rng(n, k, m)
        w = r.standard_normal((n, k)).astype(np.float32)
        packed, sub, scale = q4.quantize(w)
        x = r.standard_normal((m, k)).astype(np.float32)
        for threads in (1, 2):
            kernels.set_threads(threads)
            got = kernels.q4_linear(packed, sub, scale, x)
            assert np.array_equal(got, reference(packed, sub, scale, x)), (isa, threads, n, k)


def test_q4_linear_arbitrary_bytes_and_extremes(isa):
    """Every nibble and sub-scale value, not only what the quantizer writes; then the largest
    accumulator the format allows (K = 16384, every weight -8 at sub 127, x constant)."""
    r = rng(5)
    n, k = 21, 2560
    packed = r.integers(0, 256, size=(n, k // 2), dtype=np.uint8)
    sub = r.integers(0, q4.MAX_SUB + 1, size=(n, k // 128), dtype=np.int16)
    scale = r.random(n).astype(np.float32)
    x = r.standard_normal((3, k)).astype(np.float32)
    x[1, 7] = -50.0  # a token whose absmax element is negative
    assert np.array_equal(kernels.q4_linear(packed, sub, scale, x), reference(packed, sub, scale, x))
    k = q4.MAX_K
    packed = np.zeros((5, k // 2), np.uint8)
    sub = np.full((5, k // 128), q4.MAX_SUB, np.int16)
    x = np.ones((2, k), np.float32)
    got = kernels.q4_linear(packed, sub, np.ones(5, np.float32), x)
    assert np.array_equal(got, np.full((2, 5), np.float32(-8 * 127 * 127 * k) / np.float32(127.0)))


def test_q4_linear_writes_out_and_is_batch_invariant(isa):
    r = rng(9)
    w = r.standard_normal((300, 640)).astype(np.float32)
    packed, sub, scale = q4.quantize(w)
    x = r.standard_normal((6, 640)).astype(np.float32)
    out = np.full((6, 300), np.nan, np.float32)
    assert kernels.q4_linear(packed, sub, scale, x, out=out) is out
    for i in range(6):
        assert np.array_equal(out[i], kernels.q4_linear(packed, sub, scale, x[i:i + 1])[0])


def test_quantize_layout_and_error(monkeypatch):
    r = rng(1)
    w = r.standard_normal((50, 300)).astype(np.float32)
    w[3] = 0.0                    # an all-zero row
    w[4, 128:256] = 0.0           # an all-zero group
    w[5, :128] *= 100.0           # one loud group: the others get small sub-scales
    packed, sub, scale = q4.quantize(w)
    assert packed.shape == (50, 3 * 64) and sub.shape == (50, 3) and scale.shape == (50,)
    assert sub.min() >= 0 and sub.max() == q4.MAX_SUB
    back = q4.dequantize(packed, sub, scale, 300)
    assert np.all(back[3] == 0) and np.all(back[4, 128:256] == 0)
    rows = np.r_[0:3, 6:50]
    rel = np.linalg.norm(back - w, axis=1)[rows] / np.linalg.norm(w, axis=1)[rows]
    assert rel.max() <= 0.14, rel.max()          # 4 bits, groups of 128, Gaussian weights
    # The scale search never does worse than plain rounding at absmax / 7.5 ...
    monkeypatch.setattr(q4, "STEP_CANDIDATES", (1.0,))
    plain = q4.dequantize(*q4.quantize(w), 300)
    assert np.all(((back - w) ** 2).sum(1) <= ((plain - w) ** 2).sum(1) * (1 + 1e-5) + 1e-12)
    # ... where every weight is within half its group's stored step (sub-scales round up).
    p1, s1, d1 = q4.quantize(w)
    step = (d1[:, None] * s1).repeat(128, axis=1)[:, :300]
    assert np.all(np.abs(plain - w) <= 0.5 * step + 1e-6 * np.abs(w) + 1e-12)
    # Padding weights (k >= 300) are stored as u = 8, i.e. zero.
    b = packed.reshape(50, 3, 64)
    u = np.concatenate([b & 15, b >> 4], axis=2).reshape(50, 384)
    assert np.all(u[:, 300:] == 8)
    # Nibble placement: weight 128 g + j in the low nibble of byte j, 128 g + 64 + j in the high.
    one = np.zeros((1, 128), np.float32)
    one[0, 70] = 1.0
    p, s, d = q4.quantize(one)
    assert p[0, 6] >> 4 == 15 and np.all(np.delete(p[0], 6) == 0x88) and p[0, 6] & 15 == 8


def test_q4_linear_rejects_bad_input():
    w = np.ones((4, 256), np.float32)
    packed, sub, scale = q4.quantize(w)
    x = np.ones((1, 256), np.float32)
    with pytest.raises(ValueError, match="packed: expected dim 1 = 128"):
        kernels.q4_linear(packed[:, :64].copy(), sub, scale, x)
    with pytest.raises(TypeError, match="sub: expected dtype int16"):
        kernels.q4_linear(packed, sub.astype(np.int32), scale, x)
    with pytest.raises(ValueError, match="row_scale: expected dim 0 = 4"):
        kernels.q4_linear(packed, sub, scale[:3].copy(), x)
    with pytest.raises(ValueError, match="K <= 16384"):
        kernels.q4_linear(packed, sub, scale, np.ones((1, 16385), np.float32))
    with pytest.raises(ValueError, match="K <= 16384"):
        q4.quantize(np.ones((1, 16385), np.float32))
    with pytest.raises(ValueError, match="out"):
        kernels.q4_linear(packed, sub, scale, x, out=np.empty((1, 3), np.float32))
