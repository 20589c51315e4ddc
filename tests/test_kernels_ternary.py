"""Ternary kernels on every ISA this machine runs, bit for bit: packing (T2, T1) and its padding,
int32 accumulators of ternary_matmul_i32 (GEMV and GEMM, 1 and 2 threads) against an exact
numpy product (which the scalar reference matches too, being one of the ISAs), activation
quantization against numpy's rendering of transformers' BitNet rule, the float epilogue of
ternary_linear, the bindings' argument checks and the TERNARY_ISA override.

Exact integer products come from float64 matmuls: |sums| <= 128 * K stay far below 2**53.
"""
import functools
import os
import subprocess
import sys

import numpy as np
import pytest

from engine import kernels

ISAS = kernels.available_isas()
FORMATS = ("t2", "t1")  # the block layouts; table-lookup layouts have their own test files
SIZES = (1, 3, 31, 96, 200, 255, 1003, 2560, 6912)  # N and K
TOKENS = (1, 2, 7, 64)  # M


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = kernels.threads()
    kernels.set_threads(request.param)
    yield request.param
    kernels.set_threads(before)


def rng(*seed):
    return np.random.default_rng(list(seed))


def ternary(r, n, k):
    return r.integers(-1, 2, size=(n, k), dtype=np.int8)


def activations(r, m, k):
    """Random int8 with the extremes -128 and 127 over-represented; every other row (random
    phase) holds no -128, like quantize_rows' output: kernels may treat those rows differently."""
    q = r.integers(-128, 128, size=(m, k), dtype=np.int8)
    edge = r.random((m, k))
    q[edge < 0.1] = -128
    q[edge > 0.9] = 127
    no_min = q[int(r.integers(2))::2]
    no_min[no_min == -128] = -127
    return q


def exact(q, w):
    return (q.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64)


# Cases are shared by every ISA, thread count and format: the weights (and their packing) of
# an (N, K) do not depend on M, and the exact products are computed once.
@functools.lru_cache(maxsize=None)
def case_weights(n, k, *seed):
    return ternary(rng(n, k, *seed), n, k)


@functools.lru_cache(maxsize=None)
def case_packed(fmt, n, k, *seed):
    return kernels.pack(fmt, case_weights(n, k, *seed))


@functools.lru_cache(maxsize=None)
def case_tokens(n, k, m, *seed):
    q = activations(rng(n, k, m, *seed), m, k)
    return q, exact(q, case_weights(n, k, *seed)).astype(np.int32)


def check_matmul(fmt, w, q, packed=None, want=None):
    if packed is None:
        packed = kernels.pack(fmt, w)
    got = kernels.ternary_matmul_i32(fmt, packed, w.shape[1], q)
    assert got.dtype == np.int32 and got.shape == (q.shape[0], w.shape[0])
    if want is None:
        want = exact(q, w)
    if not np.array_equal(got, want):
        bad = np.argwhere(got != want)
        m, n = bad[0]
        pytest.fail(f"{fmt} N={w.shape[0]} K={w.shape[1]} M={q.shape[0]}: {len(bad)} wrong, "
                    f"first [{m}, {n}] = {got[m, n]}, want {want[m, n]}")


def check_case(fmt, n, k, m, *seed):
    q, want = case_tokens(n, k, m, *seed)
    check_matmul(fmt, case_weights(n, k, *seed), q, case_packed(fmt, n, k, *seed), want)


# ---- packing -------------------------------------------------------------------------------

def pack_numpy(fmt, w):
    """The layouts of csrc/ternary.h, written out independently."""
    n, k = w.shape
    if fmt == "t2":
        blocks = -(-k // 256)
        wp = np.zeros((n, blocks * 256), np.int8)
        wp[:, :k] = w
        bits = wp.reshape(n, blocks, 4, 64)  # [row, block, sub-block, bit]
        plus = np.packbits(bits == 1, axis=-1, bitorder="little")   # 4 x 8 bytes = 4 uint64 LE
        minus = np.packbits(bits == -1, axis=-1, bitorder="little")
        out = np.concatenate([plus.reshape(n, blocks, 32), minus.reshape(n, blocks, 32)], axis=-1)
        return out.reshape(n, blocks * 64)
    blocks = -(-k // 320)
    wp = np.zeros((n, blocks * 320), np.int64)
    wp[:, :k] = w
    digits = (wp.reshape(n, blocks, 5, 64) + 1)  # [row, block, digit i, byte j]
    codes = (digits * (3 ** np.arange(5))[None, None, :, None]).sum(axis=2)
    return codes.astype(np.uint8).reshape(n, blocks * 64)


@pytest.mark.parametrize("fmt", FORMATS)
def test_row_bytes(fmt):
    per_block = 256 if fmt == "t2" else 320
    for k in SIZES + (256, 257, 320, 321, 640):
        assert kernels.row_bytes(fmt, k) == -(-k // per_block) * 64


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_layout_and_round_trip(fmt):
    for n in (1, 3, 31):
        for k in SIZES + (64, 256, 257, 320, 321):
            w = ternary(rng(n, k), n, k)
            packed = kernels.pack(fmt, w)
            assert packed.dtype == np.uint8 and packed.shape == (n, kernels.row_bytes(fmt, k))
            assert np.array_equal(packed, pack_numpy(fmt, w)), (fmt, n, k)
            assert np.array_equal(kernels.unpack(fmt, packed, k), w), (fmt, n, k)


@pytest.mark.parametrize("fmt", FORMATS)
def test_padding_is_zero_weights(fmt):
    """Packing K weights equals packing them followed by zeros up to the block size."""
    per_block = 256 if fmt == "t2" else 320
    for k in (1, 31, 255, 1003):
        w = ternary(rng(k, 1), 5, k)
        padded = np.zeros((5, -(-k // per_block) * per_block), np.int8)
        padded[:, :k] = w
        assert np.array_equal(kernels.pack(fmt, w), kernels.pack(fmt, padded))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [2, -2, 127, -128])
def test_pack_rejects_non_ternary(fmt, bad):
    w = np.zeros((3, 10), np.int8)
    w[1, 7] = bad
    with pytest.raises(ValueError, match=r"\{-1, 0, 1\}"):
        kernels.pack(fmt, w)


# ---- ternary_matmul_i32: every ISA, bit for bit ------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_n_sweep(isa, threads, fmt):
    for n in SIZES:
        for k in (31, 255, 1003):
            for m in (1, 7):
                check_case(fmt, n, k, m)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_k_sweep(isa, threads, fmt):
    for k in SIZES + (64, 256, 257, 320, 321):
        for n in (3, 96, 200):
            for m in TOKENS:
                check_case(fmt, n, k, m, 1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_m_sweep(isa, threads, fmt):
    """Every token count around the GEMV / GEMM switch and the GEMM tile tails."""
    for m in range(1, 12):
        for n, k in ((31, 1003), (200, 96)):
            check_case(fmt, n, k, m, 2)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("m", [1, 7, 64])
def test_matmul_model_shapes(isa, threads, fmt, m):
    """BitNet-2B projection shapes (square, wide, tall)."""
    if isa == "ref" and m == 64:
        pytest.skip("the scalar reference is slow here; the SIMD ISAs are checked against numpy")
    for n, k in ((2560, 2560), (6912, 2560), (2560, 6912)):
        check_case(fmt, n, k, m, 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_extremes(isa, threads, fmt):
    """-128 and 127 against all -1 / all +1 weights: sums reach +-128 K (the ~x = -x - 1 edge)."""
    for k in (1, 63, 64, 65, 255, 1003, 6912):
        for n in (1, 5, 17):
            for value in (-128, 127):
                q = np.full((3, k), value, np.int8)
                for weight in (-1, 1):
                    check_matmul(fmt, np.full((n, k), weight, np.int8), q)
                w = ternary(rng(k, n, value + 128), n, k)
                check_matmul(fmt, w, q)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_zero_rows_and_weights(isa, threads, fmt):
    for n, k, m in ((5, 1003, 1), (37, 255, 7), (200, 2560, 4)):
        r = rng(n, k, m, 4)
        w, q = ternary(r, n, k), activations(r, m, k)
        w[::3] = 0          # all-zero weight rows
        q[::2] = 0          # all-zero activation rows
        check_matmul(fmt, w, q)
        check_matmul(fmt, np.zeros((n, k), np.int8), activations(r, m, k))


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_arbitrary_packed_bytes(isa, fmt):
    """Bytes the packer never writes (T2: both bits of a weight set; T1: codes 243..255) give
    what the reference kernel gives (K a whole number of blocks: no padding)."""
    for n, k, m in ((7, 1280, 1), (33, 2560, 5)):
        r = rng(n, k, m, 6)
        packed = r.integers(0, 256, size=(n, kernels.row_bytes(fmt, k)), dtype=np.uint8)
        if fmt == "t1":
            packed[:, ::3] = r.integers(243, 256, size=packed[:, ::3].shape, dtype=np.uint8)
        q = activations(r, m, k)
        got = kernels.ternary_matmul_i32(fmt, packed, k, q)
        kernels.set_isa("ref")
        want = kernels.ternary_matmul_i32(fmt, packed, k, q)
        assert np.array_equal(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_same_for_any_thread_count(isa, fmt):
    n, k, m = 1003, 2560, 9
    r = rng(n, k, m, 5)
    packed, q = kernels.pack(fmt, ternary(r, n, k)), activations(r, m, k)
    results = []
    for t in (1, 2, 3):
        kernels.set_threads(t)
        results.append(kernels.ternary_matmul_i32(fmt, packed, k, q))
    assert all(np.array_equal(results[0], x) for x in results[1:])


# ---- activation quantization ----------------------------------------------------------------

def quantize_numpy(x):
    """transformers' BitNet activation quantization, in float32 like torch:
    s = 127 / clamp(max|x|, min=1e-5); q = clamp(round(x * s), -128, 127), round half to even."""
    x = np.asarray(x, np.float32)
    scale = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    q = np.clip(np.rint(x * scale[:, None]), -128, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def quant_inputs():
    r = rng(6)
    rows = {k: r.standard_normal((5, k)).astype(np.float32) * r.uniform(0.01, 100, (5, 1)).astype(np.float32)
            for k in SIZES + (8, 15, 16, 17, 33, 64, 65)}
    # Ties: with max|x| = 127 the scale is exactly 1, so x * s = k + 0.5 must round to even.
    ties = np.array([[127.0] + [h + 0.5 for h in range(-8, 8)] + [-127.0, 0.25, -0.75] * 3], np.float32)
    rows["ties"] = np.repeat(ties, 3, axis=0)
    rows["zero"] = np.zeros((2, 37), np.float32)
    rows["tiny"] = np.full((2, 19), 3e-6, np.float32)   # below the 1e-5 floor of the absmax
    return rows


def test_quantize_matches_transformers_rule(isa):
    for name, x in quant_inputs().items():
        q, s = kernels.quantize_rows(x)
        wq, ws = quantize_numpy(x)
        assert np.array_equal(s, ws), name
        assert np.array_equal(q, wq), name


def test_quantize_ties_round_half_to_even(isa):
    x = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5]], np.float32)
    q, s = kernels.quantize_rows(x)
    assert s[0] == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, -126]]


def test_quantize_same_on_every_isa_including_nan_and_inf():
    x = rng(7).standard_normal((6, 203)).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 9] = np.inf
    x[3, :] = -np.inf
    x[4, 200] = np.nan
    before = kernels.active_isa()
    try:
        results = []
        for name in ISAS:
            kernels.set_isa(name)
            results.append(kernels.quantize_rows(x))
    finally:
        kernels.set_isa(before)
    for q, s in results[1:]:
        assert np.array_equal(q, results[0][0])
        assert np.array_equal(s, results[0][1], equal_nan=True)


def test_rmsnorm_quantize_rows_writes_into_given_buffers(isa):
    x = rng(8).standard_normal((4, 100)).astype(np.float32)
    weight = np.ones(100, np.float32)
    q, s = np.empty((4, 100), np.int8), np.empty(4, np.float32)
    rq, rs = kernels.rmsnorm_quantize_rows(x, weight, 1e-6, q=q, act_scale=s)
    assert rq is q and rs is s
    wq, ws = quantize_numpy(kernels.rmsnorm(x, weight, 1e-6))
    assert np.array_equal(q, wq) and np.array_equal(s, ws)


def test_rmsnorm_quantize_rows(isa):
    r = rng(9)
    for k in (1, 3, 31, 255, 1003, 2560):
        x = (r.standard_normal((7, k)) * 3).astype(np.float32)
        weight = r.uniform(0.5, 1.5, k).astype(np.float32)
        q, s = kernels.rmsnorm_quantize_rows(x, weight, 1e-6)
        # The fused version quantizes exactly the rows rmsnorm() produces.
        wq, ws = quantize_numpy(kernels.rmsnorm(x, weight, 1e-6))
        assert np.array_equal(q, wq) and np.array_equal(s, ws), k
        y = x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-6) * weight
        assert np.max(np.abs(kernels.rmsnorm(x, weight, 1e-6) - y)) < 1e-5 * np.max(np.abs(y))


# ---- epilogue -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("divide", [False, True])
def test_ternary_linear_epilogue(isa, fmt, divide):
    for n, k, m in ((3, 31, 1), (200, 1003, 7), (1003, 2560, 2)):
        r = rng(n, k, m, 10)
        w = ternary(r, n, k)
        x = r.standard_normal((m, k)).astype(np.float32)
        q, act_scale = kernels.quantize_rows(x)
        packed, weight_scale = kernels.pack(fmt, w), np.float32(0.0371)
        out = kernels.ternary_linear(fmt, packed, k, q, act_scale, float(weight_scale), divide=divide)
        acc = exact(q, w).astype(np.float32)
        if divide:   # Llama bitlinear: acc / (act_scale * weight_scale)
            want = acc / (act_scale[:, None] * weight_scale)
        else:        # BitNet: acc / act_scale * weight_scale
            want = acc / act_scale[:, None] * weight_scale
        assert out.dtype == np.float32 and np.array_equal(out, want)
        buf = np.empty((m, n), np.float32)
        assert kernels.ternary_linear(fmt, packed, k, q, act_scale, float(weight_scale),
                                      divide=divide, out=buf) is buf
        assert np.array_equal(buf, want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("divide", [False, True])
def test_ternary_linear_fused_is_each_projection(isa, threads, fmt, divide):
    """One fused call over several matrices (odd row counts, so thread chunks straddle them) gives
    each matrix's ternary_linear result, bit for bit."""
    for ns, k, m in (((31, 5, 200), 1003, 7), ((2560, 640, 640), 2560, 1), ((1, 3), 31, 2)):
        r = rng(*ns, k, m, 14)
        packed = [kernels.pack(fmt, ternary(r, n, k)) for n in ns]
        scales = [float(x) for x in r.uniform(0.01, 2.0, len(ns)).astype(np.float32)]
        q, act_scale = kernels.quantize_rows(r.standard_normal((m, k)).astype(np.float32))
        want = [kernels.ternary_linear(fmt, p, k, q, act_scale, c, divide=divide)
                for p, c in zip(packed, scales)]
        got = kernels.ternary_linear_fused(fmt, packed, k, q, act_scale, scales, divide)
        assert len(got) == len(ns) and all(np.array_equal(g, w) for g, w in zip(got, want))
        outs = [np.full((m, n), np.nan, np.float32) for n in ns]
        back = kernels.ternary_linear_fused(fmt, packed, k, q, act_scale, scales, divide, outs=outs)
        assert all(b is o and np.array_equal(o, w) for b, o, w in zip(back, outs, want))


def test_ternary_linear_fused_rejects_mismatched_lists():
    k = 40
    packed = [kernels.pack("t2", ternary(rng(15), n, k)) for n in (4, 3)]
    q, s = np.zeros((2, k), np.int8), np.ones(2, np.float32)
    with pytest.raises(ValueError, match="weight_scales: expected 2 scales"):
        kernels.ternary_linear_fused("t2", packed, k, q, s, [1.0])
    with pytest.raises(ValueError, match="outs: expected 2 arrays"):
        kernels.ternary_linear_fused("t2", packed, k, q, s, [1.0, 1.0], outs=[np.empty((2, 4), np.float32)])
    with pytest.raises(ValueError, match=r"outs\[1\]: expected dim 1 = 3, got shape \(2, 4\)"):
        kernels.ternary_linear_fused("t2", packed, k, q, s, [1.0, 1.0],
                                     outs=[np.empty((2, 4), np.float32), np.empty((2, 4), np.float32)])
    with pytest.raises(TypeError, match=r"outs\[0\]: expected a numpy array, got list"):
        kernels.ternary_linear_fused("t2", packed, k, q, s, [1.0, 1.0], outs=[[0.0], np.empty((2, 3), np.float32)])
    with pytest.raises(TypeError, match=r"packed\[1\]: expected dtype uint8, got int8"):
        kernels.ternary_linear_fused("t2", [packed[0], packed[1].view(np.int8)], k, q, s, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"packed\[0\]: expected dim 1 = 128, got shape \(4, 64\)"):
        kernels.ternary_linear_fused("t1", packed, 400, np.zeros((2, 400), np.int8), s, [1.0, 1.0])
    with pytest.raises(ValueError, match="at least one projection"):
        kernels.ternary_linear_fused("t2", [], k, q, s, [])


# ---- bindings check their arguments ------------------------------------------------------------

def test_bindings_reject_wrong_dtype():
    w = ternary(rng(11), 4, 40)
    packed, q = kernels.pack("t2", w), np.zeros((2, 40), np.int8)
    with pytest.raises(TypeError, match="expected dtype uint8, got int8"):
        kernels.ternary_matmul_i32("t2", packed.view(np.int8), 40, q)
    with pytest.raises(TypeError, match="expected dtype int8, got int16"):
        kernels.ternary_matmul_i32("t2", packed, 40, q.astype(np.int16))
    with pytest.raises(TypeError, match="expected dtype int8, got float32"):
        kernels.pack("t1", w.astype(np.float32))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        kernels.quantize_rows(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="expected dtype float32"):
        kernels.ternary_linear("t2", packed, 40, q, np.ones(2), 1.0)


def test_bindings_reject_wrong_shape_naming_expected_and_actual():
    w = ternary(rng(12), 4, 40)
    packed, q = kernels.pack("t1", w), np.zeros((2, 40), np.int8)
    with pytest.raises(ValueError, match=r"q: expected dim 1 = 39, got shape \(2, 40\)"):
        kernels.ternary_matmul_i32("t1", packed, 39, q)
    with pytest.raises(ValueError, match=r"packed: expected dim 1 = 128, got shape \(4, 64\)"):
        kernels.ternary_matmul_i32("t1", packed, 400, np.zeros((2, 400), np.int8))
    with pytest.raises(ValueError, match=r"expected 2-d array, got shape \(40,\)"):
        kernels.ternary_matmul_i32("t1", packed, 40, q[0])
    with pytest.raises(ValueError, match=r"act_scale: expected dim 0 = 2, got shape \(3,\)"):
        kernels.ternary_linear("t1", packed, 40, q, np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match=r"out: expected dim 1 = 4, got shape \(2, 5\)"):
        kernels.ternary_linear("t1", packed, 40, q, np.ones(2, np.float32), 1.0,
                               out=np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"weight: expected dim 0 = 40, got shape \(39,\)"):
        kernels.rmsnorm_quantize_rows(np.zeros((2, 40), np.float32), np.ones(39, np.float32), 1e-6)
    with pytest.raises(ValueError, match="unknown ternary format 't3'"):
        kernels.pack("t3", w)
    with pytest.raises(ValueError, match="k must be >= 1"):
        kernels.ternary_matmul_i32("t2", packed, 0, q)


def test_bindings_reject_non_contiguous_and_read_only():
    w = ternary(rng(13), 4, 80)
    packed = kernels.pack("t2", w)
    q = np.zeros((2, 80), np.int8)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.ternary_matmul_i32("t2", packed, 40, np.zeros((2, 80), np.int8)[:, ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.ternary_matmul_i32("t2", np.asfortranarray(np.vstack([packed, packed])), 80, q)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.pack("t2", np.zeros((80, 4), np.int8).T)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.quantize_rows(np.zeros((3, 8), np.float32)[::2])
    out = np.empty((2, 4), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        kernels.ternary_linear("t2", packed, 80, q, np.ones(2, np.float32), 1.0, out=out)


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="not available"):
        kernels.set_isa("sse9")


# ---- TERNARY_ISA ----------------------------------------------------------------------------

def run_with_isa(name):
    env = dict(os.environ, TERNARY_ISA=name)
    code = "import engine.kernels as k; print(k.active_isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", ISAS)
def test_ternary_isa_override(name):
    res = run_with_isa(name)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == name


def test_ternary_isa_unavailable_is_a_clear_import_error():
    name = next(n for n in ("neon", "avx512", "avx2", "bogus") if n not in ISAS)
    res = run_with_isa(name)
    assert res.returncode != 0
    assert "ImportError" in res.stderr
    assert f"TERNARY_ISA={name!r} is not available" in res.stderr
