"""Generation: Engine (load a .tpk, generate / stream / chat) over three small functions
(gpt-fast style): prefill() runs the prompt in one batched pass, decode_one_token() runs one
token, and Sampler picks the next id. StopStrings holds back text that may start a stop string.
Heavy modules (kernels, model) are imported on first use, so `import engine` stays cheap.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from engine.runtime.kvcache import DEFAULT_KV_DTYPE, check_kv_dtype
from engine.runtime.sampling import DEFAULTS as _D
from engine.runtime.sampling import Sampler, SamplingParams

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "default.tpk"

__all__ = ["Engine", "GenerationStats", "StopStrings", "TextStream", "DEFAULT_MODEL", "prefill", "decode_one_token"]


def prefill(model, ids, start_pos: int = 0):
    """Run ids at positions start_pos.. in one batched pass -> f32 [vocab] logits of the last."""
    return model.forward(ids, start_pos, last_only=True)[0]


def decode_one_token(model, token: int, pos: int):
    """Run one token at pos -> f32 [vocab] logits (a buffer reused by the next call)."""
    return model.step(token, pos)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0     # tokens actually run through prefill (a reused prefix is skipped)
    prompt_s: float = 0.0
    generated_tokens: int = 0
    generate_s: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_s if self.generate_s > 0 else 0.0


class StopStrings:
    """Holds back streamed text that could be the start of a stop string."""

    def __init__(self, stop):
        self.stop = [s for s in (stop or ()) if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """-> (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        hold = max((n for s in self.stop for n in range(min(len(s) - 1, len(self.pending)), 0, -1)
                    if self.pending.endswith(s[:n])), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TextStream:
    """Token ids -> text pieces with stop strings applied: the one detokenizing tail shared by
    Engine.stream and the server's event streams."""

    def __init__(self, detok, stop):
        self.detok, self.stops = detok, StopStrings(stop)

    def push(self, token: int) -> tuple[str, bool]:
        """-> (text safe to emit, whether a stop string was hit)."""
        return self.stops.feed(self.detok.push(token))

    def finish(self) -> str:
        """The text still held back once generation ended (not at a stop string)."""
        text, hit = self.stops.feed(self.detok.flush())
        return text + ("" if hit else self.stops.flush())


class Engine:
    def __init__(self, path=None, threads: int | None = None, ctx: int | None = None,
                 kv_dtype: str = DEFAULT_KV_DTYPE):
        """kv_dtype: the KV cache's "f32" | "f16" | "int8" (engine/runtime/kvcache.py)."""
        from engine.formats import tpk
        from engine.runtime.model import Model
        from engine.runtime.tokenizer import Tokenizer

        check_kv_dtype(kv_dtype)  # before the file is read: a bad name is the caller's error
        t0 = time.perf_counter()
        if path is None:
            if not DEFAULT_MODEL.exists():
                raise FileNotFoundError("the embedded default model (engine/data/default.tpk) is not "
                                        "built yet: pass the path of a .tpk")
            path = DEFAULT_MODEL
        self.path = os.fspath(path)
        self.tpk = tpk.read(self.path)
        self.config = self.tpk.config
        self.model = Model(self.tpk, threads=threads, ctx=ctx, kv_dtype=kv_dtype)
        tc = self.config["tokenizer"]
        try:
            self.tokenizer = Tokenizer.from_bytes(tc["type"], self.tpk.tokenizer_bytes, tc)
        except ValueError as e:
            raise tpk.TpkError(f"{self.path}: tokenizer: {e}") from None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.stats = GenerationStats()
        self._cached: list[int] = []   # ids whose K/V sit in the cache at positions 0 .. len-1

    @property
    def ctx(self) -> int:
        return self.model.ctx

    # -- logits --------------------------------------------------------------------------------
    def forward(self, ids):
        """f32 [len(ids), vocab]: logits of every position of ids, run from position 0."""
        ids = [int(i) for i in ids]
        self._cached = []
        logits = self.model.forward(ids, 0)
        self._cached = ids
        return logits

    # -- generation ----------------------------------------------------------------------------
    def generate_ids(self, prompt_ids, max_new_tokens: int, sampler: Sampler, stop_ids=frozenset()):
        """Yield new token ids after prompt_ids until max_new_tokens or a stop id (not yielded).
        Reuses the cached K/V of the longest common prefix with the previous call."""
        prompt_ids = [int(i) for i in prompt_ids]
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens)")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        self.model.cache.check_room(len(prompt_ids), max_new_tokens)
        stats = GenerationStats()
        self.stats = stats
        reuse = 0
        # dynamic / longrope RoPE: a cached prefix was rotated for another sequence length
        # (runtime/rope.py), so the whole prompt runs again, as a fresh transformers call would
        cached = [] if self.model.rope.seq_dependent else self._cached
        for a, b in zip(cached, prompt_ids[:-1]):  # at least one token must run for logits
            if a != b:
                break
            reuse += 1
        t0 = time.perf_counter()
        self._cached = []
        logits = prefill(self.model, prompt_ids[reuse:], reuse)
        self._cached = ids = prompt_ids
        stats.prompt_tokens, stats.prompt_s = len(prompt_ids) - reuse, time.perf_counter() - t0
        t0 = time.perf_counter()
        for n in range(max_new_tokens):
            token = sampler.next(logits, ids)
            if token in stop_ids:
                break
            stats.generated_tokens, stats.generate_s = n + 1, time.perf_counter() - t0
            yield token
            if n + 1 == max_new_tokens:
                break
            logits = decode_one_token(self.model, token, len(ids))
            ids.append(token)
        stats.generate_s = time.perf_counter() - t0

    def _sampler(self, temperature, top_k, top_p, min_p, repetition_penalty, seed, frequency_penalty,
                 presence_penalty, repeat_last_n) -> Sampler:
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n,
                                frequency_penalty=frequency_penalty, presence_penalty=presence_penalty)
        return Sampler(params, self.model.args.vocab_size, seed)

    def stream(self, prompt, max_new_tokens: int = 128, temperature: float = _D.temperature,
               top_k: int = _D.top_k, top_p: float = _D.top_p, min_p: float = _D.min_p,
               repetition_penalty: float = _D.repetition_penalty, seed: int | None = None, stop=(),
               ignore_eos: bool = False, add_bos: bool | None = None,
               frequency_penalty: float = _D.frequency_penalty, presence_penalty: float = _D.presence_penalty,
               repeat_last_n: int = _D.repeat_last_n):
        """Yield the continuation of prompt (text, or a list of ids) as text pieces: whole UTF-8
        characters only; ends at eos/eot, at a stop string (not yielded) or max_new_tokens."""
        ids = self._prompt_ids(prompt, add_bos)
        sampler = self._sampler(temperature, top_k, top_p, min_p, repetition_penalty, seed,
                                frequency_penalty, presence_penalty, repeat_last_n)
        stop_ids = frozenset() if ignore_eos else self.tokenizer.stop_ids
        text_stream = TextStream(self.tokenizer.stream_decoder(context_ids=ids), stop)
        gen = self.generate_ids(ids, max_new_tokens, sampler, stop_ids)
        try:
            for token in gen:
                text, hit = text_stream.push(token)
                if text:
                    yield text
                if hit:
                    return
            text = text_stream.finish()
            if text:
                yield text
        finally:
            gen.close()

    def generate(self, prompt, max_new_tokens: int = 128, temperature: float = _D.temperature,
                 top_k: int = _D.top_k, top_p: float = _D.top_p, min_p: float = _D.min_p,
                 repetition_penalty: float = _D.repetition_penalty, seed: int | None = None, stop=(),
                 ignore_eos: bool = False, add_bos: bool | None = None,
                 frequency_penalty: float = _D.frequency_penalty, presence_penalty: float = _D.presence_penalty,
                 repeat_last_n: int = _D.repeat_last_n):
        """Text in -> the continuation as text (stop strings apply). A list of ids in -> the new
        ids as a list (prompt excluded, eos/eot excluded; stop strings do not apply).
        temperature 0 is greedy; with a seed the output is reproducible. The sampling defaults
        are engine.runtime.sampling.DEFAULTS (the CLI's too)."""
        pen = dict(frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                   repeat_last_n=repeat_last_n)
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, max_new_tokens, temperature, top_k, top_p, min_p,
                                       repetition_penalty, seed, stop, ignore_eos, add_bos, **pen))
        sampler = self._sampler(temperature, top_k, top_p, min_p, repetition_penalty, seed, **pen)
        stop_ids = frozenset() if ignore_eos else self.tokenizer.stop_ids
        return list(self.generate_ids(list(prompt), max_new_tokens, sampler, stop_ids))

    def _prompt_ids(self, prompt, add_bos=None) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_bos=add_bos)
        return [int(i) for i in prompt]

    # -- chat ----------------------------------------------------------------------------------
    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> str:
        """messages [{"role": ..., "content": str}] -> prompt text (engine.runtime.chat)."""
        from engine.runtime.chat import chat_prompt
        return chat_prompt(self.tokenizer, messages, add_generation_prompt)

    def chat_ids(self, messages) -> list[int]:
        text = self.chat_prompt(messages)
        bos = self.tokenizer.token_text(self.tokenizer.bos_id) if self.tokenizer.bos_id is not None else None
        # A template that writes bos_token itself gets no second one.
        return self.tokenizer.encode(text, add_bos=False if bos and text.startswith(bos) else None)

    def chat_stream(self, messages, **kw):
        """Yield the assistant's reply to messages as text pieces (stops at eos/eot)."""
        return self.stream(self.chat_ids(messages), **kw)

    def chat(self, messages, **kw) -> str:
        """The assistant's reply to messages, as text. kw: as generate()."""
        return "".join(self.chat_stream(messages, **kw))
