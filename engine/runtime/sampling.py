"""Next-token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty.

Order (as Hugging Face transformers' logits processors): repetition penalty, then
temperature, then top-k, top-p (nucleus), min-p, then one draw from the seeded numpy
Generator. temperature <= 0 is greedy (argmax after the penalty). Each step draws exactly
one uniform number, so a seed reproduces a whole generation.

Top-k / top-p / min-p work on a small candidate set found by thresholds (no sort or
partition of the whole vocabulary); only plain temperature sampling draws over every token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8        # <= 0: greedy
    top_k: int = 40                 # <= 0 or >= vocab: off
    top_p: float = 0.95             # >= 1: off
    min_p: float = 0.05             # <= 0: off; keep p >= min_p * p_max
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages the last repeat_last_n tokens
    repeat_last_n: int = 64

    def __post_init__(self):
        if self.top_p <= 0 or self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p < 0 or self.min_p > 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_repetition_penalty(logits: np.ndarray, recent_ids, penalty: float) -> None:
    """In place, as transformers' RepetitionPenaltyLogitsProcessor: for each distinct recent
    token, a negative logit is multiplied by penalty, a positive one divided by it."""
    if penalty == 1.0 or len(recent_ids) == 0:
        return
    idx = np.unique(np.asarray(recent_ids, dtype=np.int64))
    idx = idx[(idx >= 0) & (idx < logits.shape[0])]
    vals = logits[idx]
    logits[idx] = np.where(vals < 0, vals * penalty, vals / penalty)


def top_k_candidates(x: np.ndarray, k: int, mx: float) -> np.ndarray:
    """Indices of the k largest values of x (max mx), sorted descending, ties at the k-th value
    kept (as transformers' TopK: keep x >= k-th largest). Exact without sorting the whole
    vocabulary: widen a window below the max until it holds >= k values, then partition and
    sort only those."""
    v = x.shape[0]
    idx = None
    width = 4.0
    for _ in range(12):
        idx = np.flatnonzero(x >= mx - width)
        if idx.shape[0] >= k:
            break
        width *= 2
    else:  # -inf logits or an enormous spread: fall back to the whole vocabulary
        idx = np.arange(v)
    vals = x[idx]
    if idx.shape[0] > k:
        kth = np.partition(vals, idx.shape[0] - k)[idx.shape[0] - k]
        keep = vals >= kth
        idx, vals = idx[keep], vals[keep]
    return idx[np.argsort(-vals, kind="stable")]


def nucleus_size(probs_desc: np.ndarray, top_p: float) -> int:
    """Length of the smallest prefix of descending probabilities (summing to 1) whose mass
    reaches top_p: token i is kept while the mass before it is < top_p (transformers TopP)."""
    before = np.cumsum(probs_desc, dtype=np.float64) - probs_desc
    return max(1, int(np.count_nonzero(before < top_p)))


_BLOCK = 1024


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to weights (non-negative, not all 0), from one
    uniform number. Long arrays go through per-block sums: a cumsum of the whole vocabulary is
    ~20x slower than a sum."""
    n = weights.shape[0]
    base = 0
    if n > 4 * _BLOCK:
        nb = n // _BLOCK
        sums = np.empty(nb + 1, np.float64)
        sums[:nb] = weights[:nb * _BLOCK].reshape(nb, _BLOCK).sum(axis=1)
        sums[nb] = weights[nb * _BLOCK:].sum()
        c = np.cumsum(sums)
        u = rng.random() * c[-1]
        b = min(int(np.searchsorted(c, u, side="right")), nb)
        if b:
            u -= c[b - 1]
        base = b * _BLOCK
        weights = weights[base:base + _BLOCK]
    else:
        u = None
    c = np.cumsum(weights, dtype=np.float64)
    if u is None:
        u = rng.random() * c[-1]
    return base + min(int(np.searchsorted(c, u, side="right")), weights.shape[0] - 1)


def candidates(logits: np.ndarray, params: SamplingParams, recent_ids=(),
               work: np.ndarray | None = None, scratch: np.ndarray | None = None):
    """The tokens sampling may pick and their unnormalized weights, after penalty, temperature,
    top-k, top-p and min-p: (ids int64[n], weights f32[n]), or (None, weights f32[V]) when
    every token stays (weights is then `work`). Not for greedy params. logits is not modified."""
    v = logits.shape[0]
    work = np.empty(v, np.float32) if work is None else work
    np.copyto(work, logits)
    if params.repetition_penalty != 1.0 and len(recent_ids):
        apply_repetition_penalty(work, list(recent_ids)[-params.repeat_last_n:], params.repetition_penalty)
    np.multiply(work, np.float32(1.0 / params.temperature), out=work)
    mx = float(work.max())
    use_top_k = 0 < params.top_k < v
    use_top_p = params.top_p < 1.0

    if not use_top_k and not use_top_p:
        # Full vocabulary: exp(x - max) has p_max = 1, so min-p is a plain threshold.
        np.subtract(work, mx, out=work)
        np.exp(work, out=work)
        if params.min_p > 0:
            cand = np.flatnonzero(work >= params.min_p)
            return cand, work[cand]
        return None, work

    if use_top_k:
        cand = top_k_candidates(work, params.top_k, mx)
        probs = np.exp(work[cand] - mx)
        probs /= probs.sum()
    else:
        # Nucleus over the whole vocabulary: grow a top-k candidate set until it holds
        # top_p of the mass (almost always the first try).
        scratch = np.empty(v, np.float32) if scratch is None else scratch
        np.subtract(work, mx, out=scratch)
        z = float(np.exp(scratch, out=scratch).sum(dtype=np.float64))
        k = 64
        while True:
            k = min(k, v)
            cand = top_k_candidates(work, k, mx)
            probs = np.exp(work[cand] - mx) / np.float32(z)
            if k == v or probs.sum() >= params.top_p:
                break
            k *= 8
    if use_top_p:
        n = nucleus_size(probs, params.top_p)
        cand, probs = cand[:n], probs[:n]
    if params.min_p > 0:
        keep = probs >= params.min_p * probs[0]
        cand, probs = cand[keep], probs[keep]
    return cand, probs


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           recent_ids=(), work: np.ndarray | None = None, scratch: np.ndarray | None = None) -> int:
    """One token id from logits f32[V] (not modified). work/scratch: f32[V] buffers to reuse."""
    if params.greedy:
        if params.repetition_penalty == 1.0 or not len(recent_ids):
            return int(np.argmax(logits))
        work = np.empty_like(logits) if work is None else work
        np.copyto(work, logits)
        apply_repetition_penalty(work, list(recent_ids)[-params.repeat_last_n:], params.repetition_penalty)
        return int(np.argmax(work))
    cand, weights = candidates(logits, params, recent_ids, work, scratch)
    i = draw(weights, rng)
    return i if cand is None else int(cand[i])


class Sampler:
    """SamplingParams + a seeded Generator + reusable scratch for one vocabulary size."""

    def __init__(self, params: SamplingParams, vocab_size: int, seed: int | None = None):
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.work = np.empty(vocab_size, np.float32)     # (vocab,)
        self.scratch = np.empty(vocab_size, np.float32)  # (vocab,)

    def __call__(self, logits: np.ndarray, recent_ids=()) -> int:
        return sample(logits, self.params, self.rng, recent_ids, self.work, self.scratch)

    def next(self, logits: np.ndarray, ids) -> int:
        """The next token after ids (prompt + generated so far): the one sampling step of every
        decode loop (Engine.generate_ids, Batch); it owns the repetition-penalty window."""
        p = self.params
        window = p.repeat_last_n if p.repetition_penalty != 1.0 else 0
        return self(logits, ids[-window:] if window else ())
