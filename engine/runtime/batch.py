"""Continuous batching over one Model: a fixed number of slots, each with its own KV cache,
and one batched pass per step over every active sequence (the engine behind ternary-serve).

    batch = Batch(model, max_batch=8)
    seq = Sequence(prompt_ids, max_new_tokens=64, sampler=Sampler(params, vocab, seed),
                   stop_ids=tokenizer.stop_ids, on_token=print, on_finish=print)
    batch.submit(seq)                 # waits in a bounded queue until a slot frees
    batch.start()                     # the engine loop in one background thread
    batch.cancel(seq)                 # from any thread: frees the slot at once

One step runs R rows through the model (R <= max_batch + prefill_chunk):
  every decoding sequence gives 1 row: its last sampled token at its next position;
  prefilling sequences, first admitted first, share a budget of `prefill_chunk` prompt tokens
  (up to model.PREFILL_CHUNK when nothing is decoding), so a new prompt costs the running
  generations one chunk per step, and a long generation never holds a prompt back.
Every linear is one kernel call over all R rows. The kernels are row-independent (a row's
result is bit-identical alone or in a batch), so every sequence gets exactly the logits, and
with the same seed the same tokens, that Engine.generate gives it alone. RoPE gathers cos/sin
by each row's position; the cache update and attention run per sequence on its slot's cache.
Requests join (admitted into free slots) and leave (finished or cancelled) between steps.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine.runtime.kvcache import KVCache
from engine.runtime.model import PREFILL_CHUNK, make_buffers, rows
from engine.runtime.sampling import Sampler

log = logging.getLogger("ternary.batch")

STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"   # finish reasons
DEFAULT_PREFILL_CHUNK = 64


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full (the server answers 429)."""


@dataclass(eq=False)
class Sequence:
    """One request. Callbacks run on the engine thread: keep them short and non-blocking.
    on_token(token) for every new token; on_finish(reason) exactly once, reason in
    STOP (a stop id, not emitted), LENGTH (max_new_tokens), CANCELLED, ERROR (see .error)."""
    prompt_ids: list
    max_new_tokens: int
    sampler: Sampler
    stop_ids: frozenset = frozenset()
    on_token: Callable[[int], None] | None = None
    on_finish: Callable[[str], None] | None = None
    # state, owned by the Batch
    ids: list = field(default_factory=list)      # prompt + generated tokens
    n_cached: int = 0                            # positions 0 .. n_cached-1 are in the slot's cache
    slot: int | None = None
    order: int = 0                               # admission order: prefill goes first come first
    finish_reason: str | None = None
    error: BaseException | None = None

    @property
    def generated(self) -> list:
        return self.ids[len(self.prompt_ids):]

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Batch:
    def __init__(self, model, max_batch: int = 8, max_queue: int | None = None,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"need max_batch >= 1 and prefill_chunk >= 1, got {max_batch}, {prefill_chunk}")
        self.model = m = model
        a = m.args
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.max_prefill = max(prefill_chunk, min(PREFILL_CHUNK, m.ctx))  # when nothing decodes
        self.max_rows = max(max_batch + prefill_chunk, self.max_prefill)
        # One KV cache per slot; np.zeros maps pages lazily, so resident memory grows with the
        # positions used and is bounded by max_batch * ctx.
        self.caches = [KVCache(a.n_layers, a.n_kv_heads, m.ctx, a.head_dim, m.cache.dtype)
                       for _ in range(max_batch)]
        self.buf = make_buffers(a, self.max_rows)
        self.tokens = np.zeros(self.max_rows, np.int64)                 # (R,) token of each row
        self.pos = np.zeros(self.max_rows, np.int64)                    # (R,) position of each row
        self.cos = np.zeros((self.max_rows, a.head_dim // 2), np.float32)  # (R, D/2) gathered
        self.sin = np.zeros((self.max_rows, a.head_dim // 2), np.float32)
        self.sample_rows = np.zeros(max_batch, np.int64)                # rows whose logits are sampled
        self.h_last = np.zeros((max_batch, a.dim), np.float32)           # (S, dim) their hidden states
        self.logits = np.zeros((max_batch, a.vocab_size), np.float32)   # (S, vocab)
        self._slots: list[Sequence | None] = [None] * max_batch
        self._waiting: deque[Sequence] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = 0
        # on_step(sequences, rows) after every batched pass, on the engine thread (metrics).
        self.on_step: Callable[[int, int], None] | None = None

    # -- requests (any thread) -----------------------------------------------------------------
    def submit(self, seq: Sequence) -> Sequence:
        """Queue seq. ValueError / ContextError for a bad request, QueueFull when full."""
        ids = [int(i) for i in seq.prompt_ids]
        if not ids:
            raise ValueError("the prompt is empty (no tokens)")
        v = self.model.args.vocab_size
        if min(ids) < 0 or max(ids) >= v:
            raise ValueError(f"token ids must be in [0, {v})")
        if seq.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {seq.max_new_tokens}")
        self.caches[0].check_room(len(ids), seq.max_new_tokens)
        seq.prompt_ids, seq.ids, seq.n_cached = ids, list(ids), 0
        if seq.max_new_tokens == 0:
            seq.finish_reason = LENGTH
            _call(seq.on_finish, LENGTH)
            return seq
        with self._lock:
            if self._closed:
                raise RuntimeError("the batch is closed")
            free = self._slots.count(None)
            if self.max_queue is not None and len(self._waiting) >= free + self.max_queue:
                raise QueueFull(f"{self.max_batch - free} requests running and {len(self._waiting)} waiting")
            self._waiting.append(seq)
            self._wake.notify()
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Drop seq now (waiting or running); its slot is free for the next step. Idempotent."""
        if self._release(seq, CANCELLED):
            _call(seq.on_finish, CANCELLED)

    def occupancy(self) -> dict:
        with self._lock:
            active = [s for s in self._slots if s is not None]
            return {"slots": self.max_batch, "busy": len(active), "waiting": len(self._waiting),
                    "max_queue": self.max_queue, "steps": self.steps,
                    "kv_positions": sum(s.n_cached for s in active),   # cached positions, all slots
                    "kv_capacity": self.max_batch * self.model.ctx,
                    "engine_alive": self._thread is None or self._thread.is_alive()}

    # -- the engine loop -----------------------------------------------------------------------
    def start(self) -> threading.Thread:
        """Run the loop in a background thread (once; later calls return the same thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="ternary-batch", daemon=True)
            self._thread.start()
        return self._thread

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; every unfinished sequence finishes as CANCELLED."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            pending = list(self._waiting) + [s for s in self._slots if s is not None]
        for seq in pending:
            self.cancel(seq)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """Step while there is work, sleep while there is none, until close()."""
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not any(self._slots):
                    self._wake.wait()
                if self._closed:
                    return
            try:
                self.step()
            except Exception:  # a bug in the step itself: fail what ran, keep serving
                log.exception("batch step failed")

    def run_until_done(self) -> None:
        """Step on the calling thread until nothing waits or runs (tests, benchmarks)."""
        while self.step():
            pass

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> bool:
        """Admit waiting sequences into free slots, run one batched pass, sample.
        False when there was nothing to run."""
        with self._lock:
            for s in range(self.max_batch):
                if self._slots[s] is None and self._waiting:
                    seq = self._waiting.popleft()
                    seq.slot, seq.order = s, next(self._order)
                    self._slots[s] = seq
            active = [s for s in self._slots if s is not None]
        if not active:
            return False
        spans = self._plan(active)
        if not spans:   # everything admitted was cancelled meanwhile
            return True
        try:
            logits = self._run(spans)
        except Exception as e:
            log.exception("batched pass failed; failing its %d sequences", len(spans))
            for seq, *_ in spans:
                seq.error = e
                if self._release(seq, ERROR):
                    _call(seq.on_finish, ERROR)
            return True
        self.steps += 1
        _call(self.on_step, len(spans), spans[-1][2])
        i = 0
        for seq, r0, r1, pos in spans:
            seq.n_cached = pos + r1 - r0
            if seq.n_cached < len(seq.ids):   # mid-prompt chunk: no token yet
                continue
            self._sample(seq, logits[i])
            i += 1
        return True

    def _plan(self, active: list) -> list:
        """-> [(seq, row0, row1, pos0)]: decode rows first, then prompt chunks; fills tokens/pos."""
        spans, r = [], 0
        for seq in active:
            if seq.n_cached == len(seq.ids) - 1 and not seq.done:   # decoding: one row
                spans.append((seq, r, r + 1, seq.n_cached))
                r += 1
        budget = self.prefill_chunk if spans else self.max_prefill
        for seq in sorted((s for s in active if s.n_cached < len(s.ids) - 1 and not s.done),
                          key=lambda s: s.order):
            if budget == 0:
                break
            t = min(budget, len(seq.ids) - seq.n_cached)
            spans.append((seq, r, r + t, seq.n_cached))
            r, budget = r + t, budget - t
        for seq, r0, r1, pos in spans:
            self.tokens[r0:r1] = seq.ids[pos:pos + r1 - r0]
            self.pos[r0:r1] = np.arange(pos, pos + r1 - r0)
        return spans

    def _run(self, spans: list) -> np.ndarray:
        """The batched pass over the planned rows -> f32 [S, vocab] logits of the rows that
        end a sequence's known ids (one per sequence with a token to sample), in span order."""
        m = self.model
        R = spans[-1][2]
        b = rows(self.buf, R)
        b.h[:] = m.embed[self.tokens[:R]]
        if m.rope.seq_dependent:  # dynamic / longrope: a sequence's length is its known ids, as a
            # prefill or decode call of Engine.generate alone would see it (runtime/rope.py)
            for seq, r0, r1, pos in spans:
                self.cos[r0:r1], self.sin[r0:r1] = m.rope.span(pos, r1 - r0, len(seq.ids))
        else:
            np.take(m.cos, self.pos[:R], axis=0, out=self.cos[:R])
            np.take(m.sin, self.pos[:R], axis=0, out=self.sin[:R])
        n = 0
        for seq, r0, r1, pos in spans:
            if pos + r1 - r0 == len(seq.ids):
                self.sample_rows[n] = r1 - 1
                n += 1
        with np.errstate(over="ignore"):
            attn = [(self.caches[seq.slot], r0, r1, pos) for seq, r0, r1, pos in spans]
            m.run_layers(b, R, self.cos[:R], self.sin[:R], attn)
            if n:
                h = self.h_last[:n]
                np.take(b.h, self.sample_rows[:n], axis=0, out=h)
                m.head(h, self.logits[:n], b)
        return self.logits[:n]

    def _sample(self, seq: Sequence, logits: np.ndarray) -> None:
        """Sample (Sampler.next, as Engine.generate_ids), stop on a stop id (not emitted), emit,
        stop at max_new_tokens (that last token never runs through the model)."""
        if seq.done:  # cancelled while the pass ran
            return
        try:
            token = seq.sampler.next(logits, seq.ids)
            if token in seq.stop_ids:
                reason = STOP
            else:
                seq.ids.append(token)
                _call(seq.on_token, token)
                reason = LENGTH if len(seq.ids) - len(seq.prompt_ids) >= seq.max_new_tokens else None
        except Exception as e:
            log.exception("sampling failed")
            seq.error, reason = e, ERROR
        if reason is not None and self._release(seq, reason):
            _call(seq.on_finish, reason)

    def _release(self, seq: Sequence, reason: str) -> bool:
        """Finish seq with reason and free its slot or queue place; False if already finished."""
        with self._lock:
            if seq.finish_reason is not None:
                return False
            seq.finish_reason = reason
            if seq.slot is not None and self._slots[seq.slot] is seq:
                self._slots[seq.slot] = None
            else:
                try:
                    self._waiting.remove(seq)
                except ValueError:
                    pass
            return True


def _call(fn, *args) -> None:
    """A callback's failure (e.g. its event loop is gone) must not stop the engine."""
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        log.exception("sequence callback failed")


def generate(model, prompts, max_new_tokens: int, samplers, stop_ids=frozenset(), max_batch: int = 8,
             prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> list[list[int]]:
    """New ids of every prompt (ids), all run through one Batch on this thread."""
    batch = Batch(model, max_batch=max_batch, prefill_chunk=prefill_chunk)
    seqs = [batch.submit(Sequence(p, max_new_tokens, s, stop_ids)) for p, s in zip(prompts, samplers)]
    batch.run_until_done()
    return [s.generated for s in seqs]
