"""Sampler.next's top-k path in C++ (csrc/sample.cpp via engine/runtime/sampling.py _FastTopK)
gives the same tokens as the numpy sampler (sample() with the window's ids) for the same seed."""
import numpy as np
import pytest

from engine import kernels as K
from engine.runtime.sampling import Sampler, SamplingParams


def _logits(rng, v, kind):
    x = (rng.standard_normal(v) * 3).astype(np.float32)
    if kind == "ties":       # many exactly equal values, at and around the k-th
        x = np.round(x).astype(np.float32)
    elif kind == "neg_inf":  # most tokens masked: fewer finite values than k
        x[5:][rng.random(v - 5) < 0.98] = -np.inf
    elif kind == "spread":   # a huge spread: the numpy window search falls back to the whole vocabulary
        x[:3] = 1e6
    return x


def _pair(params, v, steps, kind, seed):
    """Tokens from the numpy path (Sampler.__call__ with the window) and from Sampler.next."""
    ref, fast = Sampler(params, v, seed), Sampler(params, v, seed)
    assert fast._fast is not None and ref._fast is not None
    rng = np.random.default_rng(seed + 100)
    ids_ref, ids_fast = [int(i) for i in rng.integers(0, v, 70)], None
    ids_fast = list(ids_ref)
    a, b = [], []
    for _ in range(steps):
        x = _logits(rng, v, kind)
        ta = ref(x, ids_ref[-params.repeat_last_n:] if params.repeat_last_n else ())
        tb = fast.next(x, ids_fast)
        a.append(ta)
        b.append(tb)
        ids_ref.append(ta)
        ids_fast.append(ta)  # the same history for both, even after a mismatch
    return a, b


@pytest.mark.parametrize("kind", ["normal", "ties", "neg_inf", "spread"])
@pytest.mark.parametrize("params", [
    SamplingParams(),  # the CLI's defaults
    SamplingParams(temperature=0.9, top_k=40, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                   frequency_penalty=0.0),
    SamplingParams(temperature=1.3, top_k=7, top_p=0.6, min_p=0.0, repetition_penalty=1.3,
                   frequency_penalty=-0.5, presence_penalty=0.7, repeat_last_n=16),
    SamplingParams(temperature=0.7, top_k=200, top_p=1.0, min_p=0.2, repetition_penalty=0.8),
    SamplingParams(temperature=2.0, top_k=1, top_p=0.9, min_p=0.05),
])
def test_same_tokens_as_numpy(params, kind):
    a, b = _pair(params, 512, 60, kind, seed=3)
    assert a == b
    assert len(set(a)) > 1 or params.top_k == 1 or kind == "spread"


def test_block_draw_without_top_p():
    # more than 4 * 1024 candidates and no top-p: the per-block draw in numpy, the same uniform
    params = SamplingParams(temperature=5.0, top_k=6000, top_p=1.0, min_p=0.0)
    a, b = _pair(params, 8192, 20, "normal", seed=5)
    assert a == b


def test_nan_logits_take_the_numpy_path():
    params = SamplingParams()
    ref, fast = Sampler(params, 64, 1), Sampler(params, 64, 1)
    x = np.linspace(-2, 2, 64, dtype=np.float32)
    x[10] = np.nan
    assert fast.next(x, [1, 2, 3]) == ref(x, [1, 2, 3])


def test_kernel_checks_its_arguments():
    v = 16
    x = np.zeros(v, np.float32)
    bufs = (np.empty(v, np.float32), np.empty(v, np.int64), np.empty(v, np.float32))
    w, c = np.array([3, v], np.int64), np.ones(2, np.int32)
    with pytest.raises(ValueError, match="window"):
        K.sample_top_k(x, w, c, 1.1, 0.0, 0.0, 4, 1.0, *bufs)
    with pytest.raises(ValueError, match="0 < k"):
        K.sample_top_k(x, w[:1], c[:1], 1.1, 0.0, 0.0, v, 1.0, *bufs)
    with pytest.raises(TypeError, match="float32"):
        K.sample_top_k(x.astype(np.float64), w[:1], c[:1], 1.1, 0.0, 0.0, 4, 1.0, *bufs)


def test_kernel_top_k_with_ties():
    x = np.array([1, 5, 3, 5, 3, 3, 0], np.float32)
    work, ids, scaled = np.empty(7, np.float32), np.empty(7, np.int64), np.empty(7, np.float32)
    n = K.sample_top_k(x, np.zeros(0, np.int64), np.zeros(0, np.int32), 1.0, 0.0, 0.0, 3, 0.5,
                       work, ids, scaled)
    assert n == 5 and ids[:n].tolist() == [1, 3, 2, 4, 5]  # 3 largest + the ties at the 3rd
    np.testing.assert_array_equal(scaled[:n], [0, 0, -1, -1, -1])


def test_subclass_call_is_still_used():
    class Fixed(Sampler):
        def __call__(self, logits, recent_ids=()):
            return 7

    s = Fixed(SamplingParams(), 64, 0)
    assert s._fast is None and s.next(np.zeros(64, np.float32), [1, 2]) == 7
