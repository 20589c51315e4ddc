"""Dense kernels against numpy, on every ISA this machine runs: fp16 / int8 weight linears,
attention (causal, GQA, chunked KV), NeoX rope, rmsnorm; results independent of thread count.

Float kernels are checked within a tolerance of the float64 result scaled by the sum of the
magnitudes of the products (summation order differs between ISAs); what must not depend on
threads, tiling or batch is checked bit for bit.
"""
import math

import numpy as np
import pytest

from engine import kernels

ISAS = kernels.available_isas()
ODD_N = (1, 3, 17, 31, 96, 200)
ODD_K = (1, 3, 15, 16, 17, 31, 33, 96, 200, 255, 1003)


def rng(*seed):
    return np.random.default_rng(list(seed))


def check_linear(got, x, w, scale=None, rtol=1e-5):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    want = x64 @ w64.T
    bound = rtol * (np.abs(x64) @ np.abs(w64).T) + 1e-30
    if scale is not None:
        want, bound = want * scale, bound * scale
    err = np.abs(got - want)
    assert np.all(err <= bound), f"max err / bound {np.max(err / bound):.3g}"


@pytest.mark.parametrize("m", [1, 2, 5, 7, 13])
def test_f16_linear_odd_sizes(isa, m):
    for n in ODD_N:
        for k in ODD_K:
            r = rng(n, k, m)
            w = r.standard_normal((n, k)).astype(np.float16)
            x = r.standard_normal((m, k)).astype(np.float32)
            check_linear(kernels.f16_linear(w, x), x, w)


@pytest.mark.parametrize("m", [1, 2, 5, 7, 13])
def test_int8_linear_odd_sizes(isa, m):
    for n in ODD_N:
        for k in ODD_K:
            r = rng(n, k, m, 8)
            w = r.integers(-128, 128, size=(n, k), dtype=np.int8)
            s = (r.random(n) * 0.1).astype(np.float32)
            x = r.standard_normal((m, k)).astype(np.float32)
            check_linear(kernels.int8_linear(w, s, x), x, w, s)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("m", [1, 7])
def test_f16_linear_fused_is_each_matrix(isa, threads, m):
    """One fused call gives each matrix's f16_linear result bit for bit (odd row counts, so
    thread chunks straddle matrices), into given buffers too; mismatched lists are refused."""
    kernels.set_threads(threads)  # the isa fixture restores the count
    for ns, k in (((31, 5, 200), 1003), ((2560, 640, 640), 256), ((1,), 3)):
        r = rng(*ns, k, m, 9)
        ws = [r.standard_normal((n, k)).astype(np.float16) for n in ns]
        x = r.standard_normal((m, k)).astype(np.float32)
        want = [kernels.f16_linear(w, x) for w in ws]
        got = kernels.f16_linear_fused(ws, x)
        assert len(got) == len(ns) and all(np.array_equal(g, w) for g, w in zip(got, want))
        outs = [np.full((m, n), np.nan, np.float32) for n in ns]
        back = kernels.f16_linear_fused(ws, x, outs=outs)
        assert all(b is o and np.array_equal(o, w) for b, o, w in zip(back, outs, want))
    w, x = np.zeros((4, 8), np.float16), np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="outs: expected 2 arrays"):
        kernels.f16_linear_fused([w, w], x, outs=[np.empty((2, 4), np.float32)])
    with pytest.raises(ValueError, match=r"w\[1\]: expected dim 1 = 8, got shape \(4, 9\)"):
        kernels.f16_linear_fused([w, np.zeros((4, 9), np.float16)], x)
    with pytest.raises(ValueError, match="at least one matrix"):
        kernels.f16_linear_fused([], x)


def test_f16_special_values(isa):
    # Subnormal, largest finite, negative zero and exact integers survive the conversion.
    vals = np.array([6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, -0.0, 1.0, -2.0, 0.5, 1e-3], np.float16)
    w = np.ascontiguousarray(np.tile(vals, (5, 7))[:, :67])  # K = 67: full vectors and a tail
    x = rng(1).standard_normal((3, w.shape[1])).astype(np.float32)
    check_linear(kernels.f16_linear(w, x), x, w)
    zeros = kernels.f16_linear(np.zeros((4, 9), np.float16), np.ascontiguousarray(x[:, :9]))
    assert np.array_equal(zeros, np.zeros((3, 4)))


def test_int8_extremes(isa):
    k = 1003
    w = np.full((19, k), -128, np.int8)
    w[1::2] = 127
    x = np.full((2, k), 3.0, np.float32)
    s = np.full(19, 0.5, np.float32)
    got = kernels.int8_linear(w, s, x)
    assert np.array_equal(got[:, 0], np.full(2, -128 * 3.0 * k * 0.5, np.float32))
    assert np.array_equal(got[:, 1], np.full(2, 127 * 3.0 * k * 0.5, np.float32))


@pytest.mark.parametrize("fmt", ["f16", "int8"])
def test_linear_identical_across_threads_and_batch(isa, fmt):
    """Same bits for 1 and 2 threads, and a token alone (GEMV) equals its row in a batch (GEMM):
    decode and prefill of the same token give the same logits."""
    r = rng(3)
    n, k, m = 1003, 255, 13
    x = r.standard_normal((m, k)).astype(np.float32)
    if fmt == "f16":
        w = r.standard_normal((n, k)).astype(np.float16)
        run = lambda xx, out=None: kernels.f16_linear(w, xx, out=out)  # noqa: E731
    else:
        w = r.integers(-128, 128, size=(n, k), dtype=np.int8)
        s = r.random(n).astype(np.float32)
        run = lambda xx, out=None: kernels.int8_linear(w, s, xx, out=out)  # noqa: E731
    kernels.set_threads(1)
    one = run(x)
    kernels.set_threads(2)
    two = run(x)
    assert np.array_equal(one, two)
    for i in (0, 6, 12):
        assert np.array_equal(run(x[i:i + 1].copy())[0], one[i])
    out = np.full((m, n), np.nan, np.float32)
    assert run(x, out) is out and np.array_equal(out, one)


def test_f16_linear_long_prompt(isa):
    """Activations too large to stay cached (M x K x 4 > 4 MB) take the K-blocked GEMM path:
    still within tolerance, still the same bits as the token alone."""
    r = rng(5)
    n, k, m = 37, 3001, 400
    w = r.standard_normal((n, k)).astype(np.float16)
    x = r.standard_normal((m, k)).astype(np.float32)
    got = kernels.f16_linear(w, x)
    check_linear(got, x, w)
    for i in (0, 199, 399):
        assert np.array_equal(kernels.f16_linear(w, x[i:i + 1].copy())[0], got[i])


def attention_numpy(q, k_cache, v_cache, pos0):
    T, Hq, D = q.shape
    g = Hq // k_cache.shape[0]
    out = np.zeros((T, Hq, D))
    for t in range(T):
        n = pos0 + t + 1
        for h in range(Hq):
            s = k_cache[h // g, :n].astype(np.float64) @ q[t, h].astype(np.float64) / math.sqrt(D)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v_cache[h // g, :n].astype(np.float64)
    return out


# (T, Hq, Hkv, D, pos0): GQA ratios 1-4, head_dim 32/64/80/128, prefill from 0, decode and
# chunks of prefill after a cached prefix, key ranges across several 256-key chunks, both the
# split-keys path (few token x kv-head pairs) and the per-(token, head) path.
ATTN_CASES = [
    (1, 4, 4, 32, 0),
    (1, 8, 4, 64, 37),
    (1, 6, 2, 80, 300),
    (1, 8, 2, 128, 1100),
    (1, 20, 5, 128, 777),
    (5, 12, 4, 64, 0),
    (7, 8, 2, 80, 254),
    (3, 9, 3, 32, 600),
    (17, 4, 1, 64, 0),
    (12, 6, 3, 80, 520),
    (40, 4, 1, 32, 200),
    (2, 6, 3, 36, 270),  # head_dim off the vector width: masked tails
    (3, 10, 5, 24, 9),
]


@pytest.mark.parametrize("T,Hq,Hkv,D,pos0", ATTN_CASES)
def test_attention_matches_numpy(isa, T, Hq, Hkv, D, pos0):
    r = rng(T, Hq, Hkv, D, pos0)
    C = pos0 + T + 3
    q = r.standard_normal((T, Hq, D)).astype(np.float32) * 2
    k_cache = r.standard_normal((Hkv, C, D)).astype(np.float32)
    v_cache = r.standard_normal((Hkv, C, D)).astype(np.float32)
    # Rows past the last position must never be read: NaN there would poison the result.
    k_cache[:, pos0 + T:] = np.nan
    v_cache[:, pos0 + T:] = np.nan
    got = kernels.attention(q, k_cache, v_cache, pos0)
    want = attention_numpy(q, k_cache, v_cache, pos0)
    assert got.shape == (T, Hq, D) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(v_cache[:, :pos0 + T]).max())


@pytest.mark.parametrize("T,Hq,Hkv,D,pos0", [(1, 8, 2, 128, 1500), (6, 6, 3, 64, 400), (40, 4, 2, 32, 300)])
def test_attention_identical_across_threads(isa, T, Hq, Hkv, D, pos0):
    r = rng(7, T)
    C = pos0 + T
    q = r.standard_normal((T, Hq, D)).astype(np.float32)
    kc = r.standard_normal((Hkv, C, D)).astype(np.float32)
    vc = r.standard_normal((Hkv, C, D)).astype(np.float32)
    kernels.set_threads(1)
    one = kernels.attention(q, kc, vc, pos0)
    kernels.set_threads(2)
    out = np.empty_like(one)
    two = kernels.attention(q, kc, vc, pos0, out=out)
    assert two is out and np.array_equal(one, two)


def test_attention_peaked_scores(isa):
    """Large logits (peaked softmax, exp arguments far below -87) stay finite and exact."""
    r = rng(11)
    D, C = 64, 600
    kc = r.standard_normal((1, C, D)).astype(np.float32)
    vc = r.standard_normal((1, C, D)).astype(np.float32)
    q = (kc[:, [123]] * 40).transpose(1, 0, 2).copy()  # [1, 1, D]: matches key 123 strongly
    got = kernels.attention(q, kc, vc, C - 1)
    np.testing.assert_allclose(got, attention_numpy(q, kc, vc, C - 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("T,H,D", [(1, 1, 2), (3, 5, 32), (7, 4, 64), (2, 3, 80), (9, 2, 128)])
def test_rope_neox_matches_numpy(T, H, D):
    r = rng(T, H, D)
    x = r.standard_normal((T, H, D)).astype(np.float32)
    pos = np.arange(T) + 5
    inv = 1.0 / (10000.0 ** (np.arange(0, D, 2) / D))
    ang = np.outer(pos, inv)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    x1, x2 = x[..., :D // 2].astype(np.float64), x[..., D // 2:].astype(np.float64)
    c, s = cos[:, None, :], sin[:, None, :]
    want = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    y = x.copy()
    kernels.rope_neox(y, cos, sin)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6 * np.abs(x).max() * 4)


@pytest.mark.parametrize("K", [1, 3, 7, 64, 255, 2560, 6913])
def test_rmsnorm_matches_numpy(K):
    r = rng(K)
    x = (r.standard_normal((5, K)) * 3).astype(np.float32)
    w = r.standard_normal(K).astype(np.float32)
    eps = 1e-5
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + eps) * w
    got = kernels.rmsnorm(x, w, eps)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    kernels.set_threads(1)
    one = kernels.rmsnorm(x, w, eps)
    kernels.set_threads(2)
    assert np.array_equal(one, kernels.rmsnorm(x, w, eps))


def test_rmsnorm_quantize_identical_across_isas():
    """The fused norm + quantize feeds the int8 kernels: every ISA must produce the same bytes."""
    r = rng(42)
    x = (r.standard_normal((9, 2563)) * 5).astype(np.float32)
    w = r.standard_normal(2563).astype(np.float32)
    before = kernels.active_isa()
    try:
        results = []
        for name in ISAS:
            kernels.set_isa(name)
            results.append(kernels.rmsnorm_quantize_rows(x, w, 1e-6))
    finally:
        kernels.set_isa(before)
    for q, s in results[1:]:
        assert np.array_equal(q, results[0][0]) and np.array_equal(s, results[0][1])


def test_stream_read_gbps_is_positive():
    assert kernels._kernels.stream_read_gbps(1 << 20, 1, 1) > 0


def test_bench_kernels_smoke(tmp_path):
    """benchmarks/bench_kernels.py validates and times one small shape end to end."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_kernels.py"
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(script), "--shapes", "attn.kv", "--threads", "1",
                    "--rounds", "1", "--min-time", "0.001", "--cache-multiple", "0.01",
                    "--gemm-m", "8", "--json", str(out)], check=True, capture_output=True, timeout=300)
    records = json.loads(out.read_text())["records"]
    # Ternary formats add the weights hot in cache ("l2" or "l3", by this CPU's L2) and an M=8 step.
    kinds = {("hot" if r["kernel"] in ("l2", "l3") else r["kernel"], r["format"]) for r in records}
    assert kinds == {(k, f) for k in ("gemv", "gemm") for f in ("t2", "t1", "tl1", "tl2", "f16")} | {
        (k, f) for k in ("hot", "m8") for f in ("t2", "t1", "tl1", "tl2")}
    assert all(r["seconds"] > 0 and r["dram_gbps"] > 0 for r in records)
