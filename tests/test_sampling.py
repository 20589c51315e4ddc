import os

import numpy as np
import pytest

from engine.runtime.sampling import (DEFAULTS, Sampler, SamplingParams, apply_penalties, apply_repetition_penalty,
                                     candidates, nucleus_size, sample)


def params(**kw):
    base = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                frequency_penalty=0.0, presence_penalty=0.0)
    base.update(kw)
    return SamplingParams(**base)


def kept(logits, p, recent=()):
    ids, w = candidates(logits, p, recent)
    ids = np.arange(len(logits)) if ids is None else ids
    return set(int(i) for i, x in zip(ids, w) if x > 0)


def test_greedy_is_argmax_and_ignores_rng():
    rng = np.random.default_rng(0)
    logits = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    for t in (0.0, -1.0):
        assert sample(logits, params(temperature=t), rng) == int(np.argmax(logits))
    assert sample(logits, params(top_k=1), rng) == int(np.argmax(logits))


def test_logits_not_modified():
    logits = np.random.default_rng(1).standard_normal(500).astype(np.float32)
    before = logits.copy()
    s = Sampler(params(top_k=10, top_p=0.9, min_p=0.1, repetition_penalty=1.3), 500, seed=0)
    s(logits, [1, 2, 3])
    s(logits)
    assert np.array_equal(logits, before)


def test_seed_reproduces_and_differs():
    logits = np.random.default_rng(2).standard_normal(300).astype(np.float32)
    p = params(temperature=1.5)
    draws = lambda seed: [Sampler(p, 300, seed)(logits) for _ in range(1)] + \
        [s(logits) for s in [Sampler(p, 300, seed)] for _ in range(50)]  # noqa: E731
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_frequencies_follow_softmax():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
    for temp in (1.0, 0.5):
        s = Sampler(params(temperature=temp), 5, seed=0)
        n = 20000
        counts = np.bincount([s(logits) for _ in range(n)], minlength=5) / n
        p = np.exp(logits / temp) / np.exp(logits / temp).sum()
        assert np.abs(counts - p).max() < 0.015


def test_top_k_top_p_min_p_sets():
    probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
    logits = np.log(probs)
    assert kept(logits, params(top_k=2)) == {0, 1}
    assert kept(logits, params(top_p=0.79)) == {0, 1}
    assert kept(logits, params(top_p=0.81)) == {0, 1, 2}
    assert kept(logits, params(top_p=0.3)) == {0}
    assert kept(logits, params(min_p=0.5)) == {0, 1}   # p >= 0.25
    assert kept(logits, params(min_p=0.2)) == {0, 1, 2}
    assert kept(logits, params(top_k=3, min_p=0.5)) == {0, 1}


def test_nucleus_grows_beyond_first_guess():
    logits = np.zeros(5000, np.float32)  # flat: 90 % of the mass is 4500 tokens (+1: rounding)
    assert len(kept(logits, params(top_p=0.9))) in (4500, 4501)
    assert nucleus_size(np.full(10, 0.1, np.float32), 0.95) == 10


def test_repetition_penalty_like_transformers():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = logits.copy()
    apply_repetition_penalty(out, [0, 1, 1, 3], 2.0)
    assert np.allclose(out, [1.0, -4.0, 1.0, -2.0, 0.5])
    # greedy with a penalty can move the argmax
    assert sample(np.array([1.0, 0.9], np.float32), params(temperature=0, repetition_penalty=1.5),
                  np.random.default_rng(0), recent_ids=[0]) == 1


def test_frequency_penalty_exact():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = logits.copy()
    apply_penalties(out, [0, 1, 1, 3, 3, 3], frequency=0.5)  # counts 1, 2, 0, 3, 0
    assert np.array_equal(out, np.array([1.5, -3.0, 1.0, -2.5, 0.5], np.float32))


def test_presence_penalty_exact():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = logits.copy()
    apply_penalties(out, [0, 1, 1, 3, 3, 3], presence=0.25)  # once per distinct id
    assert np.array_equal(out, np.array([1.75, -2.25, 1.0, -1.25, 0.5], np.float32))


def test_all_penalties_in_llama_cpp_order():
    # repetition first (negative *, positive /), then - count * frequency - presence
    logits = np.array([3.0, -1.0, 0.0, 4.0], np.float32)
    out = logits.copy()
    apply_penalties(out, np.array([0, 0, 1, 9, -1]), repetition=1.5, frequency=0.5, presence=1.0)
    assert np.allclose(out, [3.0 / 1.5 - 2 * 0.5 - 1.0, -1.0 * 1.5 - 0.5 - 1.0, 0.0, 4.0]), out
    same = logits.copy()
    apply_penalties(same, [], repetition=1.5, frequency=0.5, presence=1.0)
    assert np.array_equal(same, logits)


def test_penalties_use_only_the_window():
    logits = np.zeros(6, np.float32)
    p = params(temperature=0, frequency_penalty=1.0, repeat_last_n=2)
    # token 0 is the argmax only once it has left the 2-token window
    assert Sampler(p, 6).next(logits.copy(), [1, 2, 3, 4, 0, 5]) == 1
    assert Sampler(p, 6).next(logits.copy(), [0, 1, 2]) == 0
    off = params(temperature=0, frequency_penalty=1.0, repeat_last_n=0)
    assert not off.penalized and Sampler(off, 6).next(logits.copy(), [0, 0, 0]) == 0


def test_penalties_change_the_candidates():
    logits = np.log(np.array([0.5, 0.3, 0.2], np.float32))
    assert kept(logits, params(top_k=1), recent=[0]) == {0}
    assert kept(logits, params(top_k=1, presence_penalty=1.0), recent=[0]) == {1}
    ids, w = candidates(logits, params(frequency_penalty=0.5), [0, 0])
    got = np.zeros(3)
    got[ids if ids is not None else np.arange(3)] = w
    want = np.exp(logits - np.array([1.0, 0, 0]))
    assert np.allclose(got / got.sum(), want / want.sum())


def test_defaults_break_a_loop():
    """A model that always prefers to repeat its last token: with the default penalties the
    same token does not come back within the window more often than the logit gap allows."""
    vocab = 50
    s = Sampler(DEFAULTS, vocab, seed=0)
    ids = [1]
    for _ in range(64):
        logits = np.zeros(vocab, np.float32)
        logits[ids[-1]] = 3.0   # the loop: the last token is the most likely next one
        ids.append(s.next(logits, ids))
    runs = max(len(r) for r in "".join("x" if a == b else " " for a, b in zip(ids, ids[1:])).split(" "))
    assert DEFAULTS.penalized and runs < 10, ids
    assert all(0 <= i < vocab for i in ids)


def test_bad_params():
    for kw in (dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1), dict(repetition_penalty=0.0),
               dict(frequency_penalty=2.5), dict(presence_penalty=-3.0), dict(repeat_last_n=-1)):
        with pytest.raises(ValueError):
            params(**kw)


def test_matches_transformers_warpers():
    """Kept set and probabilities equal transformers' logits processors (same order)."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    rng = np.random.default_rng(3)
    for trial in range(30):
        v = int(rng.integers(50, 3000))
        logits = (rng.standard_normal(v) * rng.uniform(0.5, 4)).astype(np.float32)
        recent = rng.integers(0, v, 20)
        p = params(temperature=float(rng.uniform(0.3, 1.5)), top_k=int(rng.choice([0, 5, 40, 200])),
                   top_p=float(rng.choice([1.0, 0.9, 0.5])), min_p=float(rng.choice([0.0, 0.05, 0.2])),
                   repetition_penalty=float(rng.choice([1.0, 1.3])), repeat_last_n=64)
        procs = [lp.RepetitionPenaltyLogitsProcessor(p.repetition_penalty),
                 lp.TemperatureLogitsWarper(p.temperature)]
        if p.top_k:
            procs.append(lp.TopKLogitsWarper(p.top_k))
        if p.top_p < 1:
            procs.append(lp.TopPLogitsWarper(p.top_p))
        if p.min_p:
            procs.append(lp.MinPLogitsWarper(p.min_p))
        scores = torch.from_numpy(logits.copy())[None]
        ids = torch.from_numpy(recent)[None]
        for proc in procs:
            scores = proc(ids, scores)
        ref = torch.softmax(scores, -1)[0].numpy()
        cand, w = candidates(logits, p, recent)
        got = np.zeros(v, np.float32)
        if cand is None:
            got[:] = w
        else:
            got[cand] = w
        got /= got.sum()
        assert set(np.flatnonzero(got)) == set(np.flatnonzero(ref)), trial
        assert np.allclose(got, ref, atol=1e-5), trial
