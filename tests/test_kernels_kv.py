"""Attention over f16 / int8 KV caches and the int8 store, against numpy, on every ISA this
machine runs (the per-ISA fixture; TERNARY_ISA narrows it).

The int8 store is checked bit for bit against its numpy definition (csrc/ternary.h: scale =
max|x| / 127, q = rint(x / scale)). Attention is checked within the f32 attention test's
tolerance against float64 attention over the values the cache holds (f16 decoded, int8 times
its scale): the kernels add no error of their own beyond float32 summation; the error of
storing in f16 / int8 is measured on models in test_kv_dtype.py.
"""
import numpy as np
import pytest

from engine import kernels
from test_kernels_dense import ATTN_CASES, attention_numpy

# head_dim off every vector width (masked tails of int8 / f16 loads) and a single dim
ODD_CASES = [(1, 3, 1, 1, 5), (2, 4, 2, 3, 260), (3, 6, 3, 17, 40), (1, 5, 5, 33, 513),
             (4, 8, 4, 100, 31), (2, 2, 1, 129, 300)]


def rng(*seed):
    return np.random.default_rng(list(seed))


def quantize_numpy(x):
    """x f32 [..., D] -> (int8 [..., D], f32 scale [...]): the int8 cache's rows."""
    amax = np.abs(x).max(axis=-1)
    s = (amax / np.float32(127)).astype(np.float32)
    safe = np.where(s > 0, s, np.float32(1))[..., None]
    q = np.where(s[..., None] > 0, np.rint(x / safe), 0)
    return np.clip(q, -127, 127).astype(np.int8), s


def int8_cache(x):
    """x f32 [Hkv, C, D] -> (int8 cache, scales [Hkv, C]) written through kernels.kv_store_int8."""
    Hkv, C, D = x.shape
    q, s = np.zeros(x.shape, np.int8), np.zeros((Hkv, C), np.float32)
    kernels.kv_store_int8(np.ascontiguousarray(x.transpose(1, 0, 2)), q, s, 0)
    return q, s


@pytest.mark.parametrize("T,Hkv,D,pos0", [(1, 1, 1, 0), (1, 4, 64, 9), (7, 3, 17, 2), (5, 2, 129, 30),
                                          (30, 1, 33, 1)])
def test_kv_store_int8_matches_numpy(T, Hkv, D, pos0):
    r = rng(T, Hkv, D)
    C = pos0 + T + 2
    x = (r.standard_normal((T, Hkv, D)) * r.uniform(0.01, 50, (T, Hkv, 1))).astype(np.float32)
    x[0, 0, :] = 0                    # an all-zero row: scale 0, q 0
    x[-1, -1, 0] = 1e30               # a huge outlier only moves its own row's scale
    q = np.full((Hkv, C, D), 99, np.int8)
    s = np.full((Hkv, C), -1, np.float32)
    kernels.kv_store_int8(x, q, s, pos0)
    want_q, want_s = quantize_numpy(x.transpose(1, 0, 2))
    assert np.array_equal(q[:, pos0:pos0 + T], want_q)
    assert np.array_equal(s[:, pos0:pos0 + T], want_s)
    assert (q[:, :pos0] == 99).all() and (q[:, pos0 + T:] == 99).all()   # other rows untouched
    assert (s[:, :pos0] == -1).all() and (s[:, pos0 + T:] == -1).all()
    assert np.abs(q).max() <= 127


def test_kv_store_int8_error_bound():
    """Each element is within half a step (scale / 2) of its input."""
    x = rng(1).standard_normal((9, 3, 64)).astype(np.float32)
    q, s = np.zeros((3, 9, 64), np.int8), np.zeros((3, 9), np.float32)
    kernels.kv_store_int8(x, q, s, 0)
    back = q.astype(np.float64) * s[..., None]
    err = np.abs(back - x.transpose(1, 0, 2))
    assert (err <= s[..., None] * 0.5 * (1 + 1e-6)).all()


@pytest.mark.parametrize("dtype", ["f16", "int8"])
@pytest.mark.parametrize("T,Hq,Hkv,D,pos0", ATTN_CASES + ODD_CASES)
def test_attention_low_precision_cache_matches_numpy(isa, dtype, T, Hq, Hkv, D, pos0):
    r = rng(T, Hq, Hkv, D, pos0)
    C = pos0 + T + 3
    q = r.standard_normal((T, Hq, D)).astype(np.float32) * 2
    k = r.standard_normal((Hkv, C, D)).astype(np.float32)
    v = r.standard_normal((Hkv, C, D)).astype(np.float32)
    if dtype == "f16":
        kc, vc = k.astype(np.float16), v.astype(np.float16)
        # rows past the last position are never read: NaN there would poison the result
        kc[:, pos0 + T:] = np.nan
        vc[:, pos0 + T:] = np.nan
        got = kernels.attention(q, kc, vc, pos0)
        kd, vd = kc.astype(np.float64), vc.astype(np.float64)
    else:
        (kc, ks), (vc, vs) = int8_cache(k), int8_cache(v)
        ks[:, pos0 + T:] = np.nan
        vs[:, pos0 + T:] = np.nan
        got = kernels.attention(q, kc, vc, pos0, k_scale=ks, v_scale=vs)
        kd, vd = kc * ks[..., None].astype(np.float64), vc * vs[..., None].astype(np.float64)
    want = attention_numpy(q, kd, vd, pos0)
    assert got.shape == (T, Hq, D) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(vd[:, :pos0 + T]).max())


@pytest.mark.parametrize("dtype", ["f16", "int8"])
@pytest.mark.parametrize("T,Hq,Hkv,D,pos0", [(1, 8, 2, 128, 1500), (6, 6, 3, 64, 400), (40, 4, 2, 33, 300)])
def test_attention_low_precision_identical_across_threads(isa, dtype, T, Hq, Hkv, D, pos0):
    r = rng(7, T)
    C = pos0 + T
    q = r.standard_normal((T, Hq, D)).astype(np.float32)
    k = r.standard_normal((Hkv, C, D)).astype(np.float32)
    v = r.standard_normal((Hkv, C, D)).astype(np.float32)
    if dtype == "f16":
        args, kw = (k.astype(np.float16), v.astype(np.float16)), {}
    else:
        (kc, ks), (vc, vs) = int8_cache(k), int8_cache(v)
        args, kw = (kc, vc), dict(k_scale=ks, v_scale=vs)
    kernels.set_threads(1)
    one = kernels.attention(q, *args, pos0, **kw)
    kernels.set_threads(2)
    two = kernels.attention(q, *args, pos0, **kw)
    assert np.array_equal(one, two)


def test_attention_isas_agree_on_int8(isa):
    """Every ISA's int8 chunk against the scalar one (the table's generic entry)."""
    r = rng(3)
    q = r.standard_normal((3, 8, 72)).astype(np.float32)
    (kc, ks), (vc, vs) = int8_cache(r.standard_normal((2, 700, 72)).astype(np.float32)), \
        int8_cache(r.standard_normal((2, 700, 72)).astype(np.float32))
    got = kernels.attention(q, kc, vc, 600, k_scale=ks, v_scale=vs)
    kernels.set_isa("ref")
    want = kernels.attention(q, kc, vc, 600, k_scale=ks, v_scale=vs)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(vc * vs[..., None]).max())


def test_attention_cache_argument_errors():
    q = np.zeros((1, 2, 8), np.float32)
    k8, s = np.zeros((1, 4, 8), np.int8), np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="needs k_scale and v_scale"):
        kernels.attention(q, k8, k8, 0)
    with pytest.raises(ValueError, match="k_scale"):
        kernels.attention(q, k8, k8, 0, k_scale=np.zeros((1, 3), np.float32), v_scale=s)
    with pytest.raises(TypeError, match="v_scale"):
        kernels.attention(q, k8, k8, 0, k_scale=s, v_scale=s.astype(np.float64))
    with pytest.raises(ValueError, match="int8 cache only"):
        kernels.attention(q, np.zeros((1, 4, 8), np.float32), np.zeros((1, 4, 8), np.float32), 0,
                          k_scale=s, v_scale=s)
    with pytest.raises(TypeError, match="v_cache"):  # keys and values of one dtype
        kernels.attention(q, np.zeros((1, 4, 8), np.float16), np.zeros((1, 4, 8), np.float32), 0)
    with pytest.raises(TypeError, match="k_cache"):
        kernels.attention(q, np.zeros((1, 4, 8), np.float64), np.zeros((1, 4, 8), np.float64), 0)
    with pytest.raises(ValueError, match="exceed"):
        kernels.kv_store_int8(np.zeros((2, 1, 8), np.float32), k8, s, 3)
    with pytest.raises(ValueError, match="writable"):
        ro = k8.copy()
        ro.flags.writeable = False
        kernels.kv_store_int8(np.zeros((1, 1, 8), np.float32), ro, s, 0)
