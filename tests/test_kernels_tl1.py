"""TL1 (table-lookup ternary layout, csrc/ternary.h) on every ISA this machine runs, bit for bit:
the packed bytes against an independent numpy packer, unpack round trips and padding, int32
accumulators of ternary_matmul_i32 against an exact numpy product and the scalar reference over
odd sizes (K not a multiple of the 8-weight group, N not a multiple of the 16-row tile), the
-128 / 127 extremes, arbitrary packed bytes, the float linears and the bindings' checks.

Exact integer products come from float64 matmuls: |sums| <= 128 * K stay far below 2**53.
"""
import functools

import numpy as np
import pytest

from engine import kernels

FMT = "tl1"
KS = (1, 2, 3, 5, 127, 129, 255, 641, 2560, 6912)
NS = tuple(range(1, 68, 2))          # odd N: 1 .. 67
MS = tuple(range(1, 18))             # M: 1 .. 17
# Code of each nonzero pattern p = 0..7 is p; (0, 0) is 8 (ternary.h).
W0 = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
W1 = np.array([-1, 0, 1, -1, 1, -1, 0, 1])


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = kernels.threads()
    kernels.set_threads(request.param)
    yield request.param
    kernels.set_threads(before)


def rng(*seed):
    return np.random.default_rng([7, *seed])


def ternary(r, n, k):
    return r.integers(-1, 2, size=(n, k), dtype=np.int8)


def activations(r, m, k):
    q = r.integers(-128, 128, size=(m, k), dtype=np.int8)
    edge = r.random((m, k))
    q[edge < 0.1] = -128
    q[edge > 0.9] = 127
    return q


def exact(q, w):
    return (q.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64)


def pack_numpy(w):
    """The TL1 layout of csrc/ternary.h, written out independently."""
    n, k = w.shape
    groups = -(-k // 8)
    wp = np.zeros((n, groups * 8), np.int64)
    wp[:, :k] = w
    c = (wp[:, 0::2] + 1) * 3 + (wp[:, 1::2] + 1)          # [n, pairs], 0..8, centre 4
    codes = np.where(c == 4, 8, np.where(c < 4, c, c - 1)).astype(np.uint8)
    rb = 2 * groups
    out = np.zeros((n, rb), np.uint8)
    full = n // 16
    for t in range(full):
        tile = codes[16 * t:16 * t + 16].reshape(16, groups, 4)     # [row, g, L]
        lo, hi = tile[:8], tile[8:]                                  # [r, g, L]
        units = (lo | (hi << 4)).transpose(1, 2, 0)                  # [g, L, r]: byte 8L + r
        out[16 * t:16 * t + 16] = units.reshape(16, rb)
    rest = codes[16 * full:]
    out[16 * full:] = rest[:, 0::2] | (rest[:, 1::2] << 4)
    return out


@functools.lru_cache(maxsize=None)
def case(n, k, m, seed=0):
    r = rng(n, k, m, seed)
    w, q = ternary(r, n, k), activations(r, m, k)
    return w, kernels.pack(FMT, w), q, exact(q, w)


def check(n, k, m, seed=0):
    w, packed, q, want = case(n, k, m, seed)
    got = kernels.ternary_matmul_i32(FMT, packed, k, q)
    assert got.dtype == np.int32 and got.shape == (m, n)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        i, j = bad[0]
        pytest.fail(f"{kernels.active_isa()} tl1 N={n} K={k} M={m}: {len(bad)} wrong, first "
                    f"[{i}, {j}] = {got[i, j]}, want {want[i, j]}")


# ---- packing -------------------------------------------------------------------------------

def test_row_bytes_is_two_bits_per_weight_in_groups_of_8():
    for k in KS + (8, 9, 16, 17, 256, 320):
        assert kernels.row_bytes(FMT, k) == 2 * -(-k // 8)


def test_pack_layout_and_round_trip():
    for n in (1, 3, 15, 16, 17, 31, 32, 33, 67):
        for k in KS[:8] + (8, 16, 17):
            w = ternary(rng(n, k), n, k)
            packed = kernels.pack(FMT, w)
            assert packed.dtype == np.uint8 and packed.shape == (n, kernels.row_bytes(FMT, k))
            assert np.array_equal(packed, pack_numpy(w)), (n, k)
            assert np.array_equal(kernels.unpack(FMT, packed, k), w), (n, k)


def test_padding_is_zero_weights():
    """Packing K weights equals packing them followed by zeros up to the 8-weight group."""
    for n in (5, 16, 37):
        for k in (1, 3, 7, 127, 1003):
            w = ternary(rng(k, n, 1), n, k)
            padded = np.zeros((n, -(-k // 8) * 8), np.int8)
            padded[:, :k] = w
            assert np.array_equal(kernels.pack(FMT, w), kernels.pack(FMT, padded))


def test_all_zero_weights_are_code_8():
    assert (kernels.pack(FMT, np.zeros((20, 13), np.int8)) == 0x88).all()


@pytest.mark.parametrize("bad", [2, -2, 127, -128])
def test_pack_rejects_non_ternary(bad):
    w = np.zeros((17, 10), np.int8)
    w[16, 7] = bad
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        kernels.pack(FMT, w)


def test_bindings_reject_bad_inputs():
    w = ternary(rng(1), 5, 40)
    packed = kernels.pack(FMT, w)
    with pytest.raises(ValueError, match="unknown ternary format"):
        kernels.pack("tl9", w)
    with pytest.raises(ValueError):
        kernels.unpack(FMT, packed, 41)                 # row_bytes(41) != row_bytes(40)
    with pytest.raises(ValueError):
        kernels.ternary_matmul_i32(FMT, packed, 40, np.zeros((2, 39), np.int8))
    with pytest.raises(TypeError, match="uint8"):
        kernels.ternary_matmul_i32(FMT, packed.view(np.int8), 40, np.zeros((2, 40), np.int8))
    with pytest.raises(ValueError):
        kernels.ternary_matmul_i32(FMT, packed[:, :-2], 40, np.zeros((2, 40), np.int8))
    with pytest.raises(ValueError):
        kernels.row_bytes(FMT, 0)


# ---- ternary_matmul_i32: every ISA, bit for bit ---------------------------------------------

def test_matmul_k_sweep(isa, threads):
    for k in KS:
        for n in (1, 17, 33, 67):
            for m in (1, 2, 5, 8, 17):
                check(n, k, m)


def test_matmul_n_sweep(isa, threads):
    for n in NS:
        for k in (5, 129, 641):
            check(n, k, 1 + n % 5)


def test_matmul_m_sweep(isa, threads):
    """Every token count 1..17: the token blocks of 4 and their tails."""
    for m in MS:
        for n, k in ((33, 641), (67, 129), (16, 2560)):
            check(n, k, m, 2)


@pytest.mark.parametrize("m", [1, 8])
def test_matmul_model_shapes(isa, m):
    if isa == "ref" and m == 8:
        pytest.skip("the scalar reference is slow here; the SIMD ISAs are checked against numpy")
    for n, k in ((2560, 2560), (640, 2560), (2560, 6912)):
        check(n, k, m, 3)


def test_matmul_extremes(isa, threads):
    """-128 / 127 against all -1 / all +1 weights: pair sums reach +-256, int16 chunk sums their
    limit, totals +-128 K."""
    for k in (1, 2, 63, 64, 65, 511, 512, 513, 1003, 6912):
        for n in (1, 16, 17, 33):
            for value in (-128, 127):
                q = np.full((3, k), value, np.int8)
                for weight in (-1, 1):
                    w = np.full((n, k), weight, np.int8)
                    got = kernels.ternary_matmul_i32(FMT, kernels.pack(FMT, w), k, q)
                    assert np.array_equal(got, exact(q, w)), (k, n, value, weight)
                w = ternary(rng(k, n, value + 128), n, k)
                got = kernels.ternary_matmul_i32(FMT, kernels.pack(FMT, w), k, q)
                assert np.array_equal(got, exact(q, w)), (k, n, value)


def test_matmul_matches_reference_isa(isa):
    for n, k, m in ((67, 641, 5), (48, 2560, 9)):
        _, packed, q, _ = case(n, k, m, 4)
        got = kernels.ternary_matmul_i32(FMT, packed, k, q)
        kernels.set_isa("ref")
        assert np.array_equal(got, kernels.ternary_matmul_i32(FMT, packed, k, q))


def test_matmul_arbitrary_packed_bytes(isa):
    """Bytes the packer never writes (codes 9..15, padding pairs with nonzero codes) give what
    the reference kernel gives, and what the unpacked weights give."""
    for n, k, m in ((7, 1280, 1), (33, 2560, 5), (35, 131, 3)):
        r = rng(n, k, m, 6)
        packed = r.integers(0, 256, size=(n, kernels.row_bytes(FMT, k)), dtype=np.uint8)
        q = activations(r, m, k)
        got = kernels.ternary_matmul_i32(FMT, packed, k, q)
        assert np.array_equal(got, exact(q, kernels.unpack(FMT, packed, k)))
        kernels.set_isa("ref")
        assert np.array_equal(got, kernels.ternary_matmul_i32(FMT, packed, k, q))


def test_matmul_same_for_any_thread_count(isa):
    _, packed, q, want = case(1003, 2560, 9, 5)
    for t in (1, 2, 3):
        kernels.set_threads(t)
        assert np.array_equal(kernels.ternary_matmul_i32(FMT, packed, 2560, q), want)


# ---- the float linears ------------------------------------------------------------------------

@pytest.mark.parametrize("divide", [False, True])
def test_ternary_linear_equals_t2(isa, threads, divide):
    """Same weights, same int32 sums, same epilogue: tl1 floats are t2's bit for bit."""
    for n, k, m in ((3, 31, 1), (67, 1003, 7), (1003, 2560, 2)):
        r = rng(n, k, m, 10)
        w = ternary(r, n, k)
        q, s = kernels.quantize_rows(r.standard_normal((m, k)).astype(np.float32))
        a = kernels.ternary_linear(FMT, kernels.pack(FMT, w), k, q, s, 0.37, divide)
        b = kernels.ternary_linear("t2", kernels.pack("t2", w), k, q, s, 0.37, divide)
        assert np.array_equal(a, b)


def test_ternary_linear_fused_is_each_projection(isa, threads):
    """Odd row counts: the pool's chunks straddle projections and cut tiles."""
    k, m = 641, 5
    r = rng(11)
    ws = [ternary(r, n, k) for n in (37, 16, 67)]
    packed = [kernels.pack(FMT, w) for w in ws]
    q, s = kernels.quantize_rows(r.standard_normal((m, k)).astype(np.float32))
    scales = [0.5, 1.25, 2.0]
    got = kernels.ternary_linear_fused(FMT, packed, k, q, s, scales, False)
    for g, p, sc in zip(got, packed, scales):
        assert np.array_equal(g, kernels.ternary_linear(FMT, p, k, q, s, sc, False))
