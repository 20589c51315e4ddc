"""Next-token sampling: greedy, temperature, top-k, top-p, min-p, repetition / frequency /
presence penalties.

Order (as Hugging Face transformers' logits processors and llama.cpp's penalties sampler):
penalties over the last repeat_last_n tokens, then temperature, then top-k, top-p (nucleus), min-p, then one draw from the seeded numpy
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
    """The defaults are the CLI's and Engine.generate()'s (one place: DEFAULTS below); they were
    chosen with benchmarks/judge_default_model.py (benchmarks/RESULTS.md, "Sampling defaults")."""
    temperature: float = 0.5          # <= 0: greedy
    top_k: int = 40                   # <= 0 or >= vocab: off
    top_p: float = 0.95               # >= 1: off
    min_p: float = 0.05               # <= 0: off; keep p >= min_p * p_max
    repetition_penalty: float = 1.15  # 1: off; > 1 discourages the last repeat_last_n tokens
    repeat_last_n: int = 64           # the penalty window, in tokens
    frequency_penalty: float = 0.2    # logit -= frequency_penalty * count in the window
    presence_penalty: float = 0.0    # logit -= presence_penalty once if in the window

    def __post_init__(self):
        if self.top_p <= 0 or self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p < 0 or self.min_p > 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        for name in ("frequency_penalty", "presence_penalty"):
            v = getattr(self, name)
            if not -2.0 <= v <= 2.0:  # OpenAI's range
                raise ValueError(f"{name} must be in [-2, 2], got {v}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalized(self) -> bool:
        """Whether any penalty is on (and so the last repeat_last_n tokens matter)."""
        return self.repeat_last_n > 0 and (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0
                                           or self.presence_penalty != 0.0)


DEFAULTS = SamplingParams()


_BINCOUNT_MAX_VOCAB = 1 << 16  # up to here a bincount over the vocabulary is the cheapest count


def _counts(w: np.ndarray, vocab: int) -> np.ndarray:
    """For each entry of w (int64[n], ids < vocab), how many entries of w equal it: int64[n]."""
    if vocab <= _BINCOUNT_MAX_VOCAB:
        return np.bincount(w, minlength=vocab)[w]
    s = np.sort(w)
    return np.searchsorted(s, w, side="right") - np.searchsorted(s, w, side="left")


def _penalize_window(logits: np.ndarray, w: np.ndarray, repetition: float, frequency: float,
                     presence: float, counts: np.ndarray | None = None) -> None:
    """apply_penalties on w (int64[n], ids in range, duplicates allowed; counts: each entry's
    count in w, if known): a duplicate reads the same original value and writes the same
    result, so no np.unique is needed."""
    vals = logits[w]
    if repetition != 1.0:
        vals = np.where(vals < 0, vals * np.float32(repetition), vals / np.float32(repetition))
    if frequency != 0.0:
        counts = _counts(w, logits.shape[0]) if counts is None else counts
        vals = vals - counts.astype(np.float32) * np.float32(frequency)
    if presence != 0.0:
        vals = vals - np.float32(presence)
    logits[w] = vals


def apply_penalties(logits: np.ndarray, recent_ids, repetition: float = 1.0, frequency: float = 0.0,
                    presence: float = 0.0) -> None:
    """In place, as llama.cpp's penalties sampler: for each distinct token of recent_ids, a
    negative logit is multiplied by `repetition`, a positive one divided by it (transformers'
    RepetitionPenaltyLogitsProcessor), then count * frequency + presence is subtracted (OpenAI's
    frequency / presence penalties). Ids outside the vocabulary are ignored. Cost: a few numpy
    calls on the window, none over the vocabulary."""
    if len(recent_ids) == 0 or (repetition == 1.0 and frequency == 0.0 and presence == 0.0):
        return
    w = np.asarray(recent_ids, dtype=np.int64).reshape(-1)
    w = w[(w >= 0) & (w < logits.shape[0])]
    _penalize_window(logits, w, repetition, frequency, presence)


def apply_repetition_penalty(logits: np.ndarray, recent_ids, penalty: float) -> None:
    """In place, as transformers' RepetitionPenaltyLogitsProcessor: for each distinct recent
    token, a negative logit is multiplied by penalty, a positive one divided by it."""
    apply_penalties(logits, recent_ids, repetition=penalty)


def _penalize(work: np.ndarray, params: SamplingParams, recent_ids) -> None:
    if params.penalized and len(recent_ids):
        apply_penalties(work, recent_ids[-params.repeat_last_n:], params.repetition_penalty,
                        params.frequency_penalty, params.presence_penalty)


_SORT_DIRECT = 128  # candidate windows up to this size are sorted whole (cheaper than partition)


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
    if idx.shape[0] > _SORT_DIRECT:
        kth = np.partition(vals, idx.shape[0] - k)[idx.shape[0] - k]
        keep = vals >= kth
        idx, vals = idx[keep], vals[keep]
    order = np.argsort(-vals, kind="stable")
    if order.shape[0] > k:  # keep the k largest and the ties at the k-th
        n = int(np.count_nonzero(vals >= vals[order[k - 1]]))
        order = order[:n]
    return idx[order]


def nucleus_size(probs_desc: np.ndarray, top_p: float) -> int:
    """Length of the smallest prefix of descending probabilities (summing to 1) whose mass
    reaches top_p: token i is kept while the mass before it is < top_p (transformers TopP)."""
    return _nucleus_from_cumsum(np.cumsum(probs_desc, dtype=np.float64), top_p)


def _nucleus_from_cumsum(csum: np.ndarray, mass: float) -> int:
    """nucleus_size from the float64 cumulative sum of the descending weights, with mass =
    top_p x their total: token i stays while the mass before it (csum[i - 1]) is < mass."""
    return 1 + int(np.searchsorted(csum[:-1], mass, side="left"))


_BLOCK = 1024


def draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to weights (non-negative, not all 0), from one
    uniform number. Long arrays go through per-block sums: a cumsum of the whole vocabulary is
    ~20x slower than a sum."""
    return _draw_u(weights, rng.random)


def _draw_u(weights: np.ndarray, uniform) -> int:
    """draw() with uniform() giving its one uniform number in [0, 1) (called once)."""
    n = weights.shape[0]
    base = 0
    if n > 4 * _BLOCK:
        nb = n // _BLOCK
        sums = np.empty(nb + 1, np.float64)
        sums[:nb] = weights[:nb * _BLOCK].reshape(nb, _BLOCK).sum(axis=1)
        sums[nb] = weights[nb * _BLOCK:].sum()
        c = np.cumsum(sums)
        u = uniform() * c[-1]
        b = min(int(np.searchsorted(c, u, side="right")), nb)
        if b:
            u -= c[b - 1]
        base = b * _BLOCK
        weights = weights[base:base + _BLOCK]
    else:
        u = None
    c = np.cumsum(weights, dtype=np.float64)
    if u is None:
        u = uniform() * c[-1]
    return base + min(int(np.searchsorted(c, u, side="right")), weights.shape[0] - 1)


def _penalized(logits: np.ndarray, params: SamplingParams, recent_ids, work) -> np.ndarray:
    """logits itself when no penalty applies (it is only read), else a penalized copy in work."""
    if not params.penalized or not len(recent_ids):
        return logits
    work = np.empty(logits.shape[0], np.float32) if work is None else work
    np.copyto(work, logits)
    _penalize(work, params, recent_ids)
    return work


def _select(logits, params: SamplingParams, recent_ids=(), work=None, scratch=None):
    """candidates() plus the float64 cumulative sum of the weights when it was needed anyway
    (top-p), so the draw does not sum them again: (ids | None, weights, cumsum | None)."""
    v = logits.shape[0]
    x = _penalized(logits, params, recent_ids, work)
    inv_t = np.float32(1.0 / params.temperature)
    use_top_k = 0 < params.top_k < v
    use_top_p = params.top_p < 1.0
    if use_top_k:
        # Top-k on unscaled values (the same set: x -> x / T keeps the order); only the k
        # candidates are scaled, exactly as a scaled copy of the whole vocabulary would be.
        cand = top_k_candidates(x, params.top_k, float(x.max()))
        scaled = x[cand] * inv_t
        probs = np.exp(scaled - scaled[0])  # unnormalized: probs[0] = 1, the sum is csum[-1]
    else:
        work = np.empty(v, np.float32) if work is None else work
        np.multiply(x, inv_t, out=work)
        mx = float(work.max())
        if not use_top_p:
            # Full vocabulary: exp(x - max) has p_max = 1, so min-p is a plain threshold.
            np.subtract(work, mx, out=work)
            np.exp(work, out=work)
            if params.min_p > 0:
                cand = np.flatnonzero(work >= params.min_p)
                return cand, work[cand], None
            return None, work, None
        cand, probs = _nucleus_candidates(work, mx, params.top_p, scratch)
    n, csum = probs.shape[0], None
    if use_top_p:
        csum = np.cumsum(probs, dtype=np.float64)
        # the whole is csum[-1] when probs are unnormalized (top-k path), else 1
        n = _nucleus_from_cumsum(csum, params.top_p * (csum[-1] if use_top_k else 1.0))
    if params.min_p > 0:  # probs descend, so the kept tokens are a prefix
        n = min(n, int(np.count_nonzero(probs[:n] >= params.min_p * probs[0])))
    return cand[:n], probs[:n], None if csum is None else csum[:n]


def _nucleus_candidates(work, mx: float, top_p: float, scratch):
    """Nucleus over the whole vocabulary (work: scaled logits): grow a top-k candidate set until
    it holds top_p of the mass (almost always the first try) -> (ids desc, probabilities)."""
    v = work.shape[0]
    scratch = np.empty(v, np.float32) if scratch is None else scratch
    np.subtract(work, mx, out=scratch)
    z = float(np.exp(scratch, out=scratch).sum(dtype=np.float64))
    k = 64
    while True:
        k = min(k, v)
        cand = top_k_candidates(work, k, mx)
        probs = np.exp(work[cand] - mx) / np.float32(z)
        if k == v or probs.sum() >= top_p:
            return cand, probs
        k *= 8


def candidates(logits: np.ndarray, params: SamplingParams, recent_ids=(),
               work: np.ndarray | None = None, scratch: np.ndarray | None = None):
    """The tokens sampling may pick and their unnormalized weights, after penalties, temperature,
    top-k, top-p and min-p: (ids int64[n], weights f32[n]), or (None, weights f32[V]) when
    every token stays (weights is then `work`). Not for greedy params. logits is not modified."""
    cand, weights, _ = _select(logits, params, recent_ids, work, scratch)
    return cand, weights


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           recent_ids=(), work: np.ndarray | None = None, scratch: np.ndarray | None = None) -> int:
    """One token id from logits f32[V] (not modified). work/scratch: f32[V] buffers to reuse."""
    if params.greedy:
        return int(np.argmax(_penalized(logits, params, recent_ids, work)))
    cand, weights, csum = _select(logits, params, recent_ids, work, scratch)
    if csum is not None:  # the same draw as draw(weights, rng), without summing again
        u = rng.random() * csum[-1]
        return int(cand[min(int(np.searchsorted(csum, u, side="right")), csum.shape[0] - 1)])
    i = draw(weights, rng)
    return i if cand is None else int(cand[i])


class _Window:
    """The last n token ids of a growing list (a ring; order does not matter to the penalties)
    and the count of every id in it (int32[vocab]), updated with only the ids appended since the
    last call: O(1) numpy-scalar work per generated token."""

    EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int32))  # no window: (ids, counts)

    def __init__(self, n: int, vocab: int):
        self.n, self.vocab = n, vocab
        self.ring = np.zeros(n, np.int64)       # (n,) ids in the window, in no order
        self.counts = np.zeros(vocab, np.int32)  # (vocab,) occurrences in the window
        self.filled = self.pos = self.seen = 0
        self.src = None                          # the list last read, and its last id read
        self.last = None

    def update(self, ids):
        """-> (window ids int64[m], their counts int32[m]) for the last n ids of ids."""
        seen = self.seen
        if ids is self.src and len(ids) >= seen and (seen == 0 or ids[seen - 1] == self.last):
            new = ids[seen:]
        else:  # another list, or this one rewritten: start over from its tail
            self.counts[self.ring[:self.filled]] = 0
            self.filled = self.pos = 0
            new = ids[-self.n:]
        for t in new:
            t = int(t)
            if not 0 <= t < self.vocab:
                continue
            if self.filled == self.n:
                self.counts[self.ring[self.pos]] -= 1
            else:
                self.filled += 1
            self.ring[self.pos] = t
            self.counts[t] += 1
            self.pos = (self.pos + 1) % self.n
        self.src, self.seen = ids, len(ids)
        self.last = ids[-1] if len(ids) else None
        w = self.ring[:self.filled]
        return w, self.counts[w]


class _FastTopK:
    """Sampler.next's top-k path in two kernel calls (csrc/sample.cpp): penalties over the window
    and the top-k candidates scaled by the temperature, then numpy's exp of those (not libm's:
    the same float32 values as _select's), then the top-p / min-p cut and the draw from one
    uniform of the same Generator. Each float operation is _select's and sample()'s, so a seed
    gives the same tokens."""

    def __init__(self, params: SamplingParams, vocab: int):
        from engine import kernels  # not at import: `import engine` stays cheap
        self.top_k, self.kern = params.top_k, kernels
        self.pen = (params.repetition_penalty, params.frequency_penalty, params.presence_penalty)
        self.inv_t = np.float32(1.0 / params.temperature)  # as _select's
        self.top_p, self.min_p = params.top_p, params.min_p
        self.work = np.empty(vocab, np.float32)   # (vocab,) penalized logits
        self.ids = np.empty(vocab, np.int64)      # (vocab,) candidate ids, best first
        self.scaled = np.empty(vocab, np.float32)  # (vocab,) candidates' scaled logits, then exp
        self.csum = np.empty(vocab, np.float64)   # (vocab,) running sum of the weights

    def __call__(self, logits, w, counts, rng):
        """The next token, or None for a NaN logit (the numpy path decides then; nothing drawn)."""
        rep, freq, pres = self.pen
        n = self.kern.sample_top_k(logits, w, counts, rep, freq, pres, self.top_k, self.inv_t,
                                   self.work, self.ids, self.scaled)
        if n < 0:
            return None
        probs = np.exp(self.scaled[:n], out=self.scaled[:n])  # unnormalized: probs[0] = 1
        u = rng.random()
        i = self.kern.sample_cut_draw(probs, self.top_p, self.min_p, u, 4 * _BLOCK, self.csum)
        if i == -2:
            raise ValueError("no token left to sample: the probabilities are NaN")
        if i == -1:  # more than 4 blocks without top-p: draw()'s per-block sums, the same uniform
            keep = min(n, int(np.count_nonzero(probs >= self.min_p * probs[0]))) if self.min_p > 0 else n
            i = _draw_u(probs[:keep], lambda: u)
        return int(self.ids[i])


class Sampler:
    """SamplingParams + a seeded Generator + reusable scratch for one vocabulary size, and the
    penalty window kept up to date one token at a time (see next())."""

    def __init__(self, params: SamplingParams, vocab_size: int, seed: int | None = None):
        self.params = params
        self.rng = np.random.default_rng(seed)
        self.work = np.empty(vocab_size, np.float32)     # (vocab,)
        self.scratch = np.empty(vocab_size, np.float32)  # (vocab,)
        self._penalized = None                           # (vocab,) penalized logits, on first use
        self._window = _Window(params.repeat_last_n, vocab_size) if params.penalized else None
        # the top-k path in C++, unless a subclass replaced __call__ (next() must go through it)
        fast = not params.greedy and 0 < params.top_k < vocab_size and type(self).__call__ is Sampler.__call__
        self._fast = _FastTopK(params, vocab_size) if fast else None

    def __call__(self, logits: np.ndarray, recent_ids=()) -> int:
        return sample(logits, self.params, self.rng, recent_ids, self.work, self.scratch)

    def next(self, logits: np.ndarray, ids) -> int:
        """The next token after ids (prompt + generated so far): the one sampling step of every
        decode loop (Engine.generate_ids, Batch). Equal to self(logits, ids[-repeat_last_n:]),
        with the window's counts updated by the new ids only."""
        if self._fast is not None and logits.dtype == np.float32 and logits.flags.c_contiguous:
            w, counts = self._window.update(ids) if self._window is not None else _Window.EMPTY
            token = self._fast(logits, w, counts, self.rng)
            if token is not None:
                return token
        if self._window is None:
            return self(logits)
        w, counts = self._window.update(ids)
        if not w.shape[0]:
            return self(logits)
        if self._penalized is None:
            self._penalized = np.empty_like(self.work)
        x = self._penalized
        np.copyto(x, logits)
        p = self.params
        _penalize_window(x, w, p.repetition_penalty, p.frequency_penalty, p.presence_penalty, counts)
        return self(x)  # no recent ids: the penalties are not applied twice
