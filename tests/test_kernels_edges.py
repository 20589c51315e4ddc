"""Kernel edge cases for every ISA, aimed at the sanitized build (.ci/run, -DTERNARY_SANITIZE=ON):
numpy views at odd byte offsets (unaligned pointers), inputs that end exactly at the end of
their allocation (so AddressSanitizer sees any read past it), odd sizes and zero-length inputs.

A kernel given a view at an odd byte offset computes what it computes on an aligned copy when
its elements are bytes (packed weights, int8 activations, read with unaligned loads), and
refuses a misaligned wider element type with a ValueError (the kernels access those through
typed pointers); one given zero rows or tokens returns an empty result without touching memory.
"""
import numpy as np
import pytest

from engine import kernels
from engine import quant as q4

FORMATS = kernels.FORMATS
OFFSETS = (1, 2, 3)  # bytes past an allocation's start: misaligned for every element size > 1


def rng(*seed):
    return np.random.default_rng(list(seed))


def at_offset(a, offset):
    """A copy of `a` at `offset` bytes into a fresh allocation that ends exactly where it ends."""
    a = np.ascontiguousarray(a)
    buf = np.empty(offset + a.nbytes, np.uint8)
    view = buf[offset:].view(a.dtype).reshape(a.shape)
    view[...] = a
    if offset % a.dtype.itemsize:
        assert not view.flags.aligned
    assert view.flags.c_contiguous
    return view


def tight(shape, dtype):
    """An uninitialised C-contiguous array in an allocation of exactly its size."""
    return at_offset(np.empty(shape, dtype), 0)


def ternary(r, n, k):
    return r.integers(-1, 2, size=(n, k), dtype=np.int8)


def int8(r, m, k):
    return r.integers(-128, 128, size=(m, k), dtype=np.int8)


# ---- unaligned pointers and reads up to the last byte ---------------------------------------

def misaligned(a):
    return a.ctypes.data % a.dtype.itemsize != 0


def check_each_unaligned(fn, arrays, offset):
    """fn(*arrays) with each array in turn (then all at once) moved to `offset` bytes into its
    own allocation: byte arrays (packed weights, int8 activations) give the same result; a
    misaligned wider element type is refused with a ValueError that says so."""
    want = fn(*arrays)
    trials = [[at_offset(a, offset) if j == i else a for j, a in enumerate(arrays)]
              for i in range(len(arrays))]
    trials.append([at_offset(a, offset) for a in arrays])
    for args in trials:
        if any(misaligned(a) for a in args):
            with pytest.raises(ValueError, match="aligned"):
                fn(*args)
        else:
            got = fn(*args)
            for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (3, 257, 2), (17, 321, 5), (5, 1003, 7)])
@pytest.mark.parametrize("offset", OFFSETS)
def test_ternary_matmul_unaligned(isa, fmt, n, k, m, offset):
    r = rng(n, k, m, offset)
    packed, q = kernels.pack(fmt, ternary(r, n, k)), int8(r, m, k)
    check_each_unaligned(lambda p, a: kernels.ternary_matmul_i32(fmt, p, k, a), [packed, q], offset)
    check_each_unaligned(lambda w: kernels.pack(fmt, w), [ternary(r, n, k)], offset)
    check_each_unaligned(lambda p: kernels.unpack(fmt, p, k), [packed], offset)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_ternary_linear_unaligned(isa, fmt, offset):
    n, k, m = 19, 333, 3
    r = rng(n, k, m, offset, 1)
    packed, q = kernels.pack(fmt, ternary(r, n, k)), int8(r, m, k)
    act = r.uniform(0.5, 2.0, m).astype(np.float32)
    check_each_unaligned(lambda p, a, s, o: kernels.ternary_linear(fmt, p, k, a, s, 0.7, out=o),
                         [packed, q, act, np.zeros((m, n), np.float32)], offset)
    check_each_unaligned(lambda p, a, s: kernels.ternary_linear_fused(fmt, [p, p], k, a, s, [0.7, 1.3]),
                         [packed, q, act], offset)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (3, 17, 2), (31, 255, 5)])
def test_dense_linears_unaligned(isa, offset, n, k, m):
    r = rng(n, k, m, offset, 2)
    x = r.standard_normal((m, k)).astype(np.float32)
    w16 = r.standard_normal((n, k)).astype(np.float16)
    check_each_unaligned(kernels.f16_linear, [w16, x], offset)
    w8, scale = int8(r, n, k), r.uniform(0.01, 0.1, n).astype(np.float32)
    check_each_unaligned(kernels.int8_linear, [w8, scale, x], offset)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (5, 129, 3), (17, 300, 2)])
def test_q4_linear_unaligned(isa, offset, n, k, m):
    r = rng(n, k, m, offset, 3)
    packed, sub, scale = q4.quantize(r.standard_normal((n, k)).astype(np.float32))
    x = r.standard_normal((m, k)).astype(np.float32)
    check_each_unaligned(kernels.q4_linear, [packed, sub, scale, x], offset)


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("m,k", [(1, 1), (3, 17), (2, 1003)])
def test_norm_and_quantize_unaligned(isa, offset, m, k):
    r = rng(m, k, offset, 4)
    x = (r.standard_normal((m, k)) * 3).astype(np.float32)
    w = r.uniform(0.5, 1.5, k).astype(np.float32)
    check_each_unaligned(lambda a, q, s: kernels.quantize_rows(a, q=q, act_scale=s),
                         [x, np.zeros((m, k), np.int8), np.zeros(m, np.float32)], offset)
    check_each_unaligned(lambda a, g: kernels.rmsnorm(a, g, 1e-5), [x, w], offset)
    check_each_unaligned(lambda a, g: kernels.rmsnorm_quantize_rows(a, g, 1e-5), [x, w], offset)


@pytest.mark.parametrize("offset", OFFSETS)
def test_rope_and_attention_unaligned(isa, offset):
    T, Hq, Hkv, D, C = 3, 4, 2, 10, 7
    r = rng(offset, 5)
    x = r.standard_normal((T, Hq, D)).astype(np.float32)
    cos, sin = r.standard_normal((T, D // 2)).astype(np.float32), r.standard_normal((T, D // 2)).astype(np.float32)

    def rope(a, c, s):
        a = a.copy() if not misaligned(a) else a  # rope_neox works in place
        kernels.rope_neox(a, c, s)
        return a

    check_each_unaligned(rope, [x, cos, sin], offset)
    kc = r.standard_normal((Hkv, C, D)).astype(np.float32)
    vc = r.standard_normal((Hkv, C, D)).astype(np.float32)
    check_each_unaligned(lambda a, kk, vv: kernels.attention(a, kk, vv, 2), [x, kc, vc], offset)


# ---- zero-length inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_ternary_zero_tokens_rows_and_k(isa, fmt):
    r = rng(6)
    packed = kernels.pack(fmt, ternary(r, 5, 40))
    assert kernels.ternary_matmul_i32(fmt, packed, 40, tight((0, 40), np.int8)).shape == (0, 5)
    out = kernels.ternary_linear(fmt, packed, 40, tight((0, 40), np.int8), tight((0,), np.float32), 1.0)
    assert out.shape == (0, 5)
    no_rows = kernels.pack(fmt, np.zeros((0, 40), np.int8))
    assert no_rows.shape == (0, kernels.row_bytes(fmt, 40))
    got = kernels.ternary_matmul_i32(fmt, no_rows, 40, int8(r, 3, 40))
    assert got.shape == (3, 0)
    with pytest.raises(ValueError, match="K must be >= 1"):  # a linear of no inputs: refused
        kernels.pack(fmt, np.zeros((4, 0), np.int8))
    with pytest.raises(ValueError):
        kernels.ternary_matmul_i32(fmt, tight((4, 0), np.uint8), 0, tight((2, 0), np.int8))
    assert kernels.unpack(fmt, no_rows, 40).shape == (0, 40)


def test_dense_zero_tokens_and_rows(isa):
    r = rng(7)
    w16, x = r.standard_normal((6, 9)).astype(np.float16), tight((0, 9), np.float32)
    assert kernels.f16_linear(w16, x).shape == (0, 6)
    assert kernels.f16_linear(tight((0, 9), np.float16), r.standard_normal((2, 9)).astype(np.float32)).shape == (2, 0)
    assert kernels.int8_linear(int8(r, 6, 9), np.ones(6, np.float32), x).shape == (0, 6)
    packed, sub, scale = q4.quantize(r.standard_normal((6, 9)).astype(np.float32))
    assert kernels.q4_linear(packed, sub, scale, x).shape == (0, 6)
    q, s = kernels.quantize_rows(x)
    assert q.shape == (0, 9) and s.shape == (0,)
    assert kernels.rmsnorm(x, np.ones(9, np.float32), 1e-5).shape == (0, 9)
    q, s = kernels.rmsnorm_quantize_rows(x, np.ones(9, np.float32), 1e-5)
    assert q.shape == (0, 9) and s.shape == (0,)
    kernels.rope_neox(tight((0, 2, 4), np.float32), tight((0, 2), np.float32), tight((0, 2), np.float32))
    kc = r.standard_normal((1, 5, 4)).astype(np.float32)
    assert kernels.attention(tight((0, 2, 4), np.float32), kc, kc.copy(), 0).shape == (0, 2, 4)


def test_zero_width_rows(isa):
    """K = 0 for the kernels whose K may be 0: sums over nothing."""
    assert kernels.quantize_rows(tight((3, 0), np.float32))[0].shape == (3, 0)
    out = kernels.f16_linear(tight((2, 0), np.float16), tight((3, 0), np.float32))
    np.testing.assert_array_equal(out, np.zeros((3, 2), np.float32))
