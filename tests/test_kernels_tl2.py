"""TL2 (table-lookup, 5/3 bits per weight) on every ISA this machine runs: the packed layout of
csrc/ternary.h written out independently in numpy, pack / unpack round trips and padding, and
int32 accumulators of ternary_matmul_i32 equal to the scalar reference bit for bit and to an exact
numpy product over odd sizes (GEMV, few-token and GEMM token counts, 1 and 2 threads), extreme
activations, bytes the packer never writes, the float linears and the bindings' checks.

Exact integer products come from float64 matmuls: |sums| <= 128 * K stay far below 2**53.
"""
import functools

import numpy as np
import pytest

from engine import kernels

K_SIZES = (1, 2, 3, 5, 127, 129, 255, 641, 2560, 6912)
N_SIZES = (1, 3, 31, 33, 63, 67)
M_SIZES = (1, 2, 3, 4, 5, 8, 9, 16, 17)


def rng(*seed):
    return np.random.default_rng([0x712] + list(seed))


def ternary(r, n, k):
    return r.integers(-1, 2, size=(n, k), dtype=np.int8)


def activations(r, m, k):
    """Random int8 with the extremes -128 and 127 over-represented."""
    q = r.integers(-128, 128, size=(m, k), dtype=np.int8)
    edge = r.random((m, k))
    q[edge < 0.1] = -128
    q[edge > 0.9] = 127
    return q


def exact(q, w):
    return (q.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64).astype(np.int32)


@functools.lru_cache(maxsize=None)
def case(n, k):
    w = ternary(rng(n, k), n, k)
    return w, kernels.pack("tl2", w)


@functools.lru_cache(maxsize=None)
def tokens(n, k, m):
    q = activations(rng(n, k, m), m, k)
    return q, exact(q, case(n, k)[0])


@functools.lru_cache(maxsize=None)
def reference(n, k, m):
    """The scalar reference's accumulators (computed once per case)."""
    before = kernels.active_isa()
    kernels.set_isa("ref")
    try:
        return kernels.ternary_matmul_i32("tl2", case(n, k)[1], k, tokens(n, k, m)[0])
    finally:
        kernels.set_isa(before)


def check(got, want, what):
    assert got.dtype == np.int32 and got.shape == want.shape, what
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        m, n = bad[0]
        pytest.fail(f"{what}: {len(bad)} wrong, first [{m}, {n}] = {got[m, n]}, want {want[m, n]}")


# ---- layout ----------------------------------------------------------------------------------

def pack_numpy(w):
    """ternary.h's TL2 layout, written out independently."""
    n, k = w.shape
    blocks = -(-k // 48)
    wp = np.zeros((n, blocks * 48), np.int64)
    wp[:, :k] = w
    g = wp.reshape(n, blocks, 16, 3)
    v = g[..., 0] * 9 + g[..., 1] * 3 + g[..., 2]              # [row, block, code i]
    codes = np.where(v < 0, 16 - v, v)                          # sign bit 4, magnitude bits 0..3
    stream = (codes[..., None] >> np.arange(5)) & 1               # bit 5i + d of the 80-bit block
    bits = stream.reshape(n, blocks, 5, 16)                        # word j, bit within word
    words = (bits << np.arange(16)).sum(axis=-1).astype(np.uint16)  # [row, block, word]
    out = np.zeros(n * blocks * 10, np.uint8)
    rb = blocks * 10
    for t in range(0, n, 32):
        nr = min(32, n - t)
        tile = words[t:t + nr].transpose(1, 2, 0)                  # [block, word, row]
        out[t * rb:(t + nr) * rb] = tile.astype("<u2").reshape(-1).view(np.uint8)
    return out.reshape(n, rb)


def test_row_bytes_is_five_thirds_bits_per_weight():
    for k in K_SIZES + (47, 48, 49, 96):
        assert kernels.row_bytes("tl2", k) == -(-k // 48) * 10
    assert kernels.row_bytes("tl2", 48 * 100) * 8 / (48 * 100) == pytest.approx(5 / 3)


def test_pack_layout_one_group():
    """Weights (1, 0, -1): v = 9 - 1 = 8, code 8 in bits 0..4 of the row's first word;
    (-1, 0, 1): v = -8, code 16 + 8 = 24. The padding groups are code 0 (zero weights), so the
    rest of the block is zero bytes."""
    packed = kernels.pack("tl2", np.array([[1, 0, -1]], np.int8))
    assert packed.shape == (1, 10)
    assert packed[0].tolist() == [8] + [0] * 9
    assert kernels.pack("tl2", np.array([[-1, 0, 1]], np.int8))[0].tolist() == [24] + [0] * 9


def test_pack_layout_straddling_code_and_tiles():
    """Code 3 (weights 9..11) straddles words 0 and 1; rows interleave word by word in a tile."""
    w = np.zeros((2, 12), np.int8)
    w[0, 9:12] = (-1, -1, -1)   # v = -13, code 29 = 0b11101: bit 0 -> bit 15 of word 0, the
    w[1, 0:3] = (0, 0, 1)       # rest -> bits 0..3 of word 1; row 1: code 1 in its word 0
    packed = kernels.pack("tl2", w).reshape(-1).view("<u2")  # [word j][row r] for a 2-row tile
    assert packed.tolist() == [0x8000, 1, 29 >> 1, 0, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("n", (1, 2, 31, 32, 33, 65, 67))
def test_pack_layout_and_round_trip(n):
    for k in K_SIZES + (47, 48, 49, 96, 97):
        if n * k > 70 * 2600:
            continue
        w = ternary(rng(n, k, 1), n, k)
        packed = kernels.pack("tl2", w)
        assert packed.dtype == np.uint8 and packed.shape == (n, kernels.row_bytes("tl2", k))
        assert np.array_equal(packed, pack_numpy(w)), (n, k)
        assert np.array_equal(kernels.unpack("tl2", packed, k), w), (n, k)


def test_padding_is_zero_weights():
    """Packing K weights equals packing them followed by zeros up to the block size."""
    for k in (1, 2, 47, 49, 641):
        w = ternary(rng(k, 2), 5, k)
        padded = np.zeros((5, -(-k // 48) * 48), np.int8)
        padded[:, :k] = w
        assert np.array_equal(kernels.pack("tl2", w), kernels.pack("tl2", padded))


@pytest.mark.parametrize("bad", (2, -2, 127, -128))
def test_pack_rejects_non_ternary(bad):
    w = np.zeros((3, 50), np.int8)
    w[2, 49] = bad
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        kernels.pack("tl2", w)


# ---- kernels ---------------------------------------------------------------------------------

@pytest.mark.parametrize("m", M_SIZES)
@pytest.mark.parametrize("k", K_SIZES)
def test_matmul_equals_reference_and_numpy(isa, k, m):
    """Every N of N_SIZES (odd, short last tiles, several tiles) at 1 and 2 threads."""
    for n in N_SIZES:
        w, packed = case(n, k)
        q, want = tokens(n, k, m)
        ref = reference(n, k, m)
        check(ref, want, f"ref vs numpy N={n} K={k} M={m}")
        for threads in (1, 2):
            kernels.set_threads(threads)
            got = kernels.ternary_matmul_i32("tl2", packed, k, q)
            check(got, ref, f"{isa} vs ref N={n} K={k} M={m} threads={threads}")


@pytest.mark.parametrize("m", (1, 7, 64, 128))
def test_matmul_model_shapes(isa, m):
    for n, k in ((640, 2560), (2560, 6912)):
        w, packed = case(n, k)
        q = activations(rng(n, k, m, 3), m, k)
        for threads in (1, 2):
            kernels.set_threads(threads)
            check(kernels.ternary_matmul_i32("tl2", packed, k, q), exact(q, w),
                  f"{isa} N={n} K={k} M={m} threads={threads}")


@pytest.mark.parametrize("k", (1, 5, 127, 2560, 6912))
def test_matmul_extremes(isa, k):
    """-128 / 127 everywhere against all +1 / all -1 / alternating rows: the largest table
    entries (|T| = 384) in every group, the int16 partial sums at their bound."""
    n = 35
    w = np.empty((n, k), np.int8)
    w[0::3], w[1::3], w[2::3] = 1, -1, 0
    w[2::6, ::2] = -1
    packed = kernels.pack("tl2", w)
    for value in (-128, 127):
        for m in (1, 5, 17):
            q = np.full((m, k), value, np.int8)
            q[1::2] = -128 if value == 127 else 127
            check(kernels.ternary_matmul_i32("tl2", packed, k, q), exact(q, w),
                  f"{isa} K={k} M={m} value={value}")


def test_matmul_zero_rows_and_tokens(isa):
    for n, k in ((33, 100), (1, 1)):
        packed = kernels.pack("tl2", np.zeros((n, k), np.int8))
        q = activations(rng(n, k), 3, k)
        assert not kernels.ternary_matmul_i32("tl2", packed, k, q).any()
    w, packed = case(31, 129)
    assert not kernels.ternary_matmul_i32("tl2", packed, 129, np.zeros((4, 129), np.int8)).any()


@pytest.mark.parametrize("n", (5, 32, 67))
def test_matmul_arbitrary_packed_bytes(isa, n):
    """Bytes the packer never writes (magnitudes 14, 15 and -0) read as zero weights, as unpack
    says, on every ISA."""
    k = 150
    packed = rng(n, 9).integers(0, 256, size=(n, kernels.row_bytes("tl2", k)), dtype=np.uint8)
    w = kernels.unpack("tl2", packed, k)
    assert set(np.unique(w)) <= {-1, 0, 1}
    for m in (1, 4, 9):
        q = activations(rng(n, m, 9), m, k)
        check(kernels.ternary_matmul_i32("tl2", packed, k, q), exact(q, w), f"{isa} N={n} M={m}")


def test_ternary_linear_matches_t2(isa):
    """Same weights: the tl2 and t2 linears compute the same int32 sums, so the same floats."""
    r = rng(77)
    n, k, m = 67, 641, 5
    w = ternary(r, n, k)
    x = r.standard_normal((m, k)).astype(np.float32)
    q, s = kernels.quantize_rows(x)
    for divide in (False, True):
        a = kernels.ternary_linear("tl2", kernels.pack("tl2", w), k, q, s, 0.25, divide)
        b = kernels.ternary_linear("t2", kernels.pack("t2", w), k, q, s, 0.25, divide)
        assert np.array_equal(a, b)


def test_ternary_linear_fused_is_each_projection(isa):
    r = rng(78)
    k, m = 255, 9
    ws = [ternary(r, n, k) for n in (67, 5, 33)]
    packed = [kernels.pack("tl2", w) for w in ws]
    q, s = kernels.quantize_rows(r.standard_normal((m, k)).astype(np.float32))
    for threads in (1, 2):
        kernels.set_threads(threads)
        outs = kernels.ternary_linear_fused("tl2", packed, k, q, s, [0.5, 1.0, 2.0])
        for p, o, scale in zip(packed, outs, (0.5, 1.0, 2.0)):
            assert np.array_equal(o, kernels.ternary_linear("tl2", p, k, q, s, scale))


def test_bindings_check_tl2_shapes():
    w, packed = case(33, 129)
    with pytest.raises(ValueError, match="packed"):
        kernels.ternary_matmul_i32("tl2", packed[:, :-1].copy(), 129, np.zeros((1, 129), np.int8))
    with pytest.raises(ValueError, match="packed"):
        kernels.unpack("tl2", packed, 145)  # 145 needs 4 blocks, 129 needs 3
    with pytest.raises(ValueError, match="unknown ternary format 'tl3'"):
        kernels.pack("tl3", w)
