"""ternary-serve: an OpenAI-compatible HTTP server over continuous batching (engine/runtime/batch.py).

    ternary-serve model.tpk --host 127.0.0.1 --port 8000 --threads 4 --max-batch 8

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with "stream": true as
server-sent events in OpenAI's chunk format, ending with `data: [DONE]`), GET /v1/models,
GET /health (503 {"status": "loading"} until the model is warmed up, then 200 with slot
occupancy), GET /metrics (Prometheus text, engine/serve/metrics.py), GET / (a chat page,
engine/serve/static/). Usage and examples: docs/server.md.

Threads: uvicorn's event loop runs the request handlers (parsing, tokenizing, detokenizing,
stop strings); one engine thread runs Batch.run (the kernels release the GIL). A handler
submits a Sequence whose callbacks post tokens to the handler's asyncio.Queue through
loop.call_soon_threadsafe; a handler that ends early (client gone, stop string) cancels its
Sequence, which frees the slot at once. Every handler error becomes an OpenAI-style error
body; nothing a request does can stop the server.

Safety (docs/server.md, "Safety"): the API key and the cap on requests in flight are ASGI
middleware (engine/serve/guard.py); Limits bounds body size, prompt tokens and max_tokens;
SIGTERM stops accepting, drains in-flight requests for --shutdown-timeout and exits 0.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from engine.runtime.generate import TextStream
from engine.runtime.batch import CANCELLED, DEFAULT_PREFILL_CHUNK, ERROR, Batch, QueueFull, Sequence
from engine.runtime.kvcache import DEFAULT_KV_DTYPE, KV_DTYPES
from engine.runtime.sampling import Sampler, SamplingParams
from engine.serve.guard import ApiKeyGuard, ConcurrencyLimit, InFlight
from engine.serve.metrics import Metrics, RequestCounter

log = logging.getLogger("ternary.server")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")   # the chat page

MAX_BODY_BYTES = 8 << 20       # a request body beyond this is refused (413)
BODY_TIMEOUT_S = 30.0          # a request body not in by then is refused (408)
MAX_STOP_STRINGS = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16   # OpenAI's default for /v1/completions
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# -- request parsing -------------------------------------------------------------------------------
_MISSING = object()


def _type_error(name, want, value) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {want}, but got {type(value).__name__} "
                         f"({json.dumps(value)[:50]}).", name, "invalid_type")


def _int(body, name, default=None, lo=None, hi=None):
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    if isinstance(v, float) and v.is_integer():   # 16.0 from a JSON encoder is 16
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(name, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"between {lo} and {hi}"
        raise ApiError(400, f"Invalid value for '{name}': {v}; it must be {bounds}.", name, "invalid_value")
    return v


def _num(body, name, default, lo=None, hi=None, lo_open=False):
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(name, "a number", v)
    v = float(v)
    if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        low = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        high = "" if hi is None else f"<= {hi:g}"
        raise ApiError(400, f"Invalid value for '{name}': {v:g}; it must be {' and '.join(filter(None, (low, high)))}.",
                       name, "invalid_value")
    return v


def _bool(body, name, default=False):
    v = body.get(name, _MISSING)
    if v is _MISSING or v is None:
        return default
    if not isinstance(v, bool):
        raise _type_error(name, "a boolean", v)
    return v


def _unsupported(body, name, allowed=(None, False, 0, "", [], {})):
    """Accept a parameter only at a value that means 'off'."""
    v = body.get(name)
    if not any(v is a or (type(v) is type(a) and v == a) for a in allowed):
        raise ApiError(400, f"'{name}' is not supported by this server (got {json.dumps(v)[:50]}).",
                       name, "unsupported_parameter")


def _stop(body) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise _type_error("stop", "a string or an array of strings", v)
    if len(v) > MAX_STOP_STRINGS:
        raise ApiError(400, f"Invalid value for 'stop': at most {MAX_STOP_STRINGS} stop strings.", "stop",
                       "invalid_value")
    return [s for s in v if s]


@dataclass
class GenRequest:
    prompt_ids: list
    max_tokens: int
    params: SamplingParams
    seed: int | None
    stop: list
    ignore_eos: bool
    return_token_ids: bool
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class Limits:
    """What requests may ask of the server (ternary-serve's flags). None: bounded by the
    context only (max_prompt_tokens, max_tokens), or by slots + queue (max_concurrency)."""
    max_body_bytes: int = MAX_BODY_BYTES   # 413 beyond
    body_timeout: float = BODY_TIMEOUT_S   # seconds to receive the whole body; 408 beyond
    max_prompt_tokens: int | None = None   # 400 beyond
    max_tokens: int | None = None          # a larger max_tokens: 400; absent: clamped to it
    max_concurrency: int | None = None     # generation requests in flight; 429 beyond
    api_key: str | None = None             # Authorization: Bearer <key>, 401 otherwise (guard.py)


def model_id_of(engine, name: str | None = None) -> str:
    """The id /v1/models lists: --model-name, else the .tpk's file name without its extension."""
    return name or os.path.splitext(os.path.basename(engine.path))[0]


def warm_up(engine) -> None:
    """One forward over a few tokens."""
    engine.forward(engine.tokenizer.encode("Hello")[:8] or [0])


# -- the server ------------------------------------------------------------------------------------
class Server:
    def __init__(self, engine, batch: Batch, model_id: str, limits: Limits | None = None):
        self.engine, self.batch, self.model_id = engine, batch, model_id
        self.limits = lim = limits or Limits()
        self.in_flight = InFlight(lim.max_concurrency or (
            None if batch.max_queue is None else batch.max_batch + batch.max_queue))
        self.tokenizer = engine.tokenizer
        self.ctx = engine.ctx
        self.vocab_size = engine.model.args.vocab_size
        self.created = int(time.time())
        self.metrics = Metrics()
        self.metrics.watch(batch)
        self.ready = False            # True once warmed up and the engine thread runs
        self.load_error: str | None = None

    def warm_up(self, warmup=None) -> None:
        """Run warmup(engine) (default: one forward, which pages the mmapped weights in and
        touches every kernel), then start the engine thread; until then requests get 503."""
        try:
            (warmup or warm_up)(self.engine)
            self.batch.start()
            self.ready = True
            log.info("model %s warmed up; serving", self.model_id)
        except Exception as e:
            log.exception("warm-up failed")
            self.load_error = f"{type(e).__name__}: {e}"

    def check_ready(self) -> None:
        if not self.ready:
            why = f"warm-up failed: {self.load_error}" if self.load_error else "loading"
            raise ApiError(503, f"The model is not ready ({why}); retry later.", None, "model_not_ready",
                           "server_error")

    # -- parsing shared by both endpoints ------------------------------------------------------
    def check_model(self, body):
        m = body.get("model")
        if m is None:
            return
        if not isinstance(m, str):
            raise _type_error("model", "a string", m)
        if m != self.model_id:   # 404 as OpenAI (and /v1/models/{name}) answer an unknown model
            raise ApiError(404, f"The model '{m}' does not exist; this server serves '{self.model_id}'.",
                           "model", "model_not_found")

    def gen_request(self, body, prompt_ids, chat: bool) -> GenRequest:
        if _int(body, "n", 1) != 1:
            raise ApiError(400, "Only n=1 is supported.", "n", "unsupported_value")
        if _int(body, "best_of", 1) != 1:
            raise ApiError(400, "Only best_of=1 is supported.", "best_of", "unsupported_value")
        for name in ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools", "functions"):
            _unsupported(body, name)
        rf = body.get("response_format")
        if rf is not None and rf != {"type": "text"}:
            raise ApiError(400, "Only response_format {\"type\": \"text\"} is supported.", "response_format",
                           "unsupported_parameter")
        stream = _bool(body, "stream")
        so = body.get("stream_options")
        if so is not None and not isinstance(so, dict):
            raise _type_error("stream_options", "an object", so)
        include_usage = _bool(so or {}, "include_usage")
        max_tokens = _int(body, "max_completion_tokens", None, lo=1)
        max_tokens = _int(body, "max_tokens", max_tokens, lo=1)
        temperature = _num(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
        top_k = _int(body, "top_k", 0, lo=-1)
        min_p = _num(body, "min_p", 0.0, 0.0, 1.0)
        rep = _num(body, "repetition_penalty", 1.0, 0.0, lo_open=True)
        freq = _num(body, "frequency_penalty", 0.0, -2.0, 2.0)
        pres = _num(body, "presence_penalty", 0.0, -2.0, 2.0)
        seed = _int(body, "seed")
        stop = _stop(body)
        ignore_eos = _bool(body, "ignore_eos")
        return_token_ids = _bool(body, "return_token_ids")

        n = len(prompt_ids)
        if n == 0:
            raise ApiError(400, "The prompt is empty (it encodes to no tokens).", "messages" if chat else "prompt")
        if max_tokens is None:
            room = self.ctx - n
            max_tokens = room if chat else min(COMPLETIONS_DEFAULT_MAX_TOKENS, room)
        if n + max(max_tokens, 1) > self.ctx:
            raise ApiError(400, f"This model's maximum context length is {self.ctx} tokens. However, you "
                                f"requested {n + max_tokens} tokens ({n} in the "
                                f"{'messages' if chat else 'prompt'}, {max_tokens} for the completion). "
                                f"Please reduce the length of the {'messages' if chat else 'prompt'} or "
                                f"max_tokens.", "messages" if chat else "prompt", "context_length_exceeded")
        params = SamplingParams(temperature=temperature, top_k=max(top_k, 0), top_p=top_p, min_p=min_p,
                                repetition_penalty=rep, frequency_penalty=freq, presence_penalty=pres)
        return GenRequest(prompt_ids, max_tokens, params, None if seed is None else seed % 2**64, stop,
                          ignore_eos, return_token_ids, stream, include_usage)

    def check_limits(self, body, req: GenRequest, chat: bool) -> None:
        """The server's --max-prompt-tokens and --max-tokens (the context is checked already)."""
        lim, where, n = self.limits, "messages" if chat else "prompt", len(req.prompt_ids)
        if lim.max_prompt_tokens is not None and n > lim.max_prompt_tokens:
            raise ApiError(400, f"The {where} is {n} tokens long; this server accepts at most "
                                f"{lim.max_prompt_tokens} prompt tokens.", where, "context_length_exceeded")
        if lim.max_tokens is None or req.max_tokens <= lim.max_tokens:
            return
        asked = next((k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None), None)
        if asked is None:   # the default (the rest of the context), not asked for: the cap
            req.max_tokens = lim.max_tokens
            return
        raise ApiError(400, f"{asked} is too large: {req.max_tokens}. This server supports at most "
                            f"{lim.max_tokens} completion tokens.", asked, "invalid_value")

    def completion_prompt(self, body) -> list[int]:
        p = body.get("prompt", _MISSING)
        if p is _MISSING or p is None:
            raise ApiError(400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]                            # a batch of one prompt
        if isinstance(p, str):
            return self.tokenizer.encode(p)
        if isinstance(p, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in p):
            if any(not 0 <= i < self.vocab_size for i in p):
                raise ApiError(400, f"Token ids in 'prompt' must be in [0, {self.vocab_size}).", "prompt",
                               "invalid_value")
            return list(p)
        if isinstance(p, list) and p and all(isinstance(x, (str, list)) for x in p):
            raise ApiError(400, "Only one prompt per request is supported.", "prompt", "unsupported_value")
        raise _type_error("prompt", "a string, an array of token ids, or an array of one of those", p)

    def chat_prompt(self, body) -> list[int]:
        msgs = body.get("messages", _MISSING)
        if msgs is _MISSING or msgs is None:
            raise ApiError(400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "'messages' must be a non-empty array of message objects.", "messages",
                           "invalid_type" if not isinstance(msgs, list) else "invalid_value")
        out = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _type_error(where, "an object", m)
            role = m.get("role")
            if role not in ROLES:
                raise ApiError(400, f"Invalid value for '{where}.role': {json.dumps(role)[:40]}; supported "
                                    f"roles: {', '.join(ROLES)}.", f"{where}.role", "invalid_value")
            content = m.get("content")
            if content is None:
                content = ""
            elif isinstance(content, list):         # content parts: text only
                texts = []
                for part in content:
                    text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
                    if not isinstance(text, str):
                        raise ApiError(400, f"'{where}.content': only text parts are supported.",
                                       f"{where}.content", "unsupported_value")
                    texts.append(text)
                content = "".join(texts)
            elif not isinstance(content, str):
                raise _type_error(f"{where}.content", "a string or an array of text parts", content)
            out.append({"role": ROLES[role], "content": content})
        try:
            return self.engine.chat_ids(out)
        except Exception as e:  # a chat template may raise on e.g. roles out of order
            raise ApiError(400, f"The chat template rejected the messages: {e}", "messages") from None

    # -- generation ----------------------------------------------------------------------------
    def start(self, req: GenRequest):
        """Submit req -> (seq, events): events is an async iterator of (text, finish_reason,
        token_ids, completion_tokens): text pieces with finish_reason None, then one last item
        with "stop" or "length" (none if the sequence was cancelled); token_ids are the tokens
        new since the previous item. Leaving the iterator early (client gone, stop string,
        error) cancels seq. 429 when the queue is full."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()   # bounded by max_tokens + 1 items
        put = queue.put_nowait
        m = self.metrics
        last = [0.0, False]   # time of the previous token (or of submission), any token yet

        def on_token(t):   # engine thread: time the token where it is made
            now = time.perf_counter()
            (m.token_latency if last[1] else m.ttft).observe(now - last[0])
            last[0], last[1] = now, True
            m.completion_tokens.inc()
            loop.call_soon_threadsafe(put, ("token", t))

        seq = Sequence(req.prompt_ids, req.max_tokens,
                       Sampler(req.params, self.vocab_size, req.seed),
                       frozenset() if req.ignore_eos else self.tokenizer.stop_ids,
                       on_token=on_token,
                       on_finish=lambda r: loop.call_soon_threadsafe(put, ("end", r)))
        last[0] = time.perf_counter()
        try:
            self.batch.submit(seq)
        except QueueFull as e:
            raise ApiError(429, f"The server is busy ({e}); retry later.", None, "rate_limit_exceeded",
                           "requests") from None
        m.prompt_tokens.inc(len(req.prompt_ids))
        return seq, self._events(seq, queue, req.stop, every_token=req.return_token_ids)

    async def _events(self, seq, queue, stop, every_token: bool):
        """every_token: an item per token even when it completes no text yet."""
        text_stream = TextStream(self.tokenizer.stream_decoder(context_ids=seq.prompt_ids), stop)
        ids, n = [], 0
        try:
            while True:
                kind, value = await queue.get()
                if kind == "token":
                    n += 1
                    ids.append(value)
                    text, hit = text_stream.push(value)
                    if hit:
                        self.batch.cancel(seq)
                        yield text, "stop", ids, n
                        return
                    if text or every_token:
                        yield text, None, ids, n
                        ids = []
                    continue
                if value == ERROR:
                    raise ApiError(500, f"generation failed: {seq.error}", type="server_error")
                if value == CANCELLED:   # the client left, or the server is shutting down
                    return
                yield text_stream.finish(), value, ids, n
                return
        finally:
            self.batch.cancel(seq)   # no-op when finished; frees the slot when the client left

    def usage(self, req: GenRequest, n: int) -> dict:
        p = len(req.prompt_ids)
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}


def create_app(engine, batch: Batch, model_id: str, warmup=None, limits: Limits | None = None):
    """The FastAPI app over engine (tokenizer, chat template) and batch (closed with the app's
    lifespan). At start-up a thread runs warmup(engine) (default: warm_up, one forward) and
    then starts batch; until then /health answers 503 {"status": "loading"}. limits: the
    request limits and API key (default Limits(): no key, 8 MB bodies, slots + queue in flight)."""
    from fastapi import FastAPI

    srv = Server(engine, batch, model_id, limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=srv.warm_up, args=(warmup,), name="ternary-warmup", daemon=True).start()
        yield
        batch.close()

    app = FastAPI(title="ternary-serve", lifespan=lifespan)
    app.state.server = srv
    # Starlette runs the last added outermost: count every answer, refuse a bad key before
    # the request takes a place under the concurrency cap.
    app.add_middleware(ConcurrencyLimit, in_flight=srv.in_flight)
    if srv.limits.api_key:
        app.add_middleware(ApiKeyGuard, api_key=srv.limits.api_key)
    app.add_middleware(RequestCounter, metrics=srv.metrics)
    _add_error_handlers(app)
    _add_generation_routes(app, srv)
    _add_info_routes(app, srv)
    _add_page_routes(app)
    return app


def _add_page_routes(app) -> None:
    """The chat page at / and its script and style at /static/ (files in the package: no CDN)."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _error_response(e: ApiError):
    from fastapi.responses import JSONResponse

    headers = {"Retry-After": "1"} if e.status in (429, 503) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _add_error_handlers(app) -> None:
    """Every error a request meets becomes an OpenAI-style error body."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        return _error_response(ApiError(e.status_code, str(e.detail), type="invalid_request_error"
                                        if e.status_code < 500 else "server_error"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e):
        return _error_response(ApiError(400, f"Invalid request: {e.errors()}"))

    @app.exception_handler(Exception)
    async def _internal_error(request, e):
        log.exception("request failed")
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))


async def _read_json(request, limit: int, timeout: float) -> dict:
    try:
        data = await asyncio.wait_for(_read_body(request, limit), timeout)
    except asyncio.TimeoutError:   # a body that trickles in would hold its place in flight forever
        raise ApiError(408, f"The request body did not arrive within {timeout:g} s.", None,
                       "request_timeout") from None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, f"We could not parse the JSON body of your request ({e}).") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


async def _read_body(request, limit: int) -> bytearray:
    too_large = ApiError(413, f"The request body is larger than {limit} bytes.", None, "request_too_large")
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large
    return data


async def _watch_disconnect(request, seq: Sequence, batch: Batch):
    """Cancel seq when the client of a non-streaming request goes away (body already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            batch.cancel(seq)
            return


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _with_ids(req: GenRequest, c: dict, ids) -> dict:
    """c with "token_ids" added when the request asked for them."""
    if req.return_token_ids:
        c["choices"][0]["token_ids"] = ids
    return c


async def _sse_body(srv, req: GenRequest, seq, events, chunk, kind: str):
    """The server-sent events of one streamed generation, always ending with [DONE]."""
    n = 0
    try:
        if kind == "chat":
            yield _sse(chunk(None, None))
        async for text, finish, ids, n in events:
            if text or finish or ids and req.return_token_ids:
                yield _sse(_with_ids(req, chunk(text, finish), ids))
        if seq.finish_reason == CANCELLED and n == 0:
            raise ApiError(503, "The request was cancelled (the server is shutting down).",
                           type="server_error")
        if req.include_usage:
            c = chunk("", None)
            c["choices"], c["usage"] = [], srv.usage(req, n)
            yield _sse(c)
    except ApiError as e:   # headers are sent: the error goes in the stream
        yield _sse(e.body())
    except Exception as e:  # never leave a stream without an ending
        log.exception("stream failed")
        yield _sse(ApiError(500, f"internal error: {e}", type="server_error").body())
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"


async def _collect(srv, request, req: GenRequest, seq, events, final):
    """The whole response of one non-streamed generation (cancelled if the client leaves)."""
    from fastapi.responses import JSONResponse

    watcher = asyncio.create_task(_watch_disconnect(request, seq, srv.batch))
    pieces, all_ids, finish, n = [], [], None, 0
    try:
        async for text, finish, ids, n in events:
            pieces.append(text)
            all_ids += ids
    finally:
        watcher.cancel()
        await events.aclose()
    if finish is None:
        raise ApiError(503, "The request was cancelled (client gone or server shutting down).",
                       type="server_error")
    return JSONResponse(_with_ids(req, final("".join(pieces), finish, srv.usage(req, n)), all_ids))


async def _run(srv, request, req: GenRequest, chunk, final, kind: str):
    """Stream (SSE) or collect one generation; chunk(text, finish) -> a chunk dict,
    final(text, finish, usage) -> the whole response dict; "token_ids" added on request."""
    from fastapi.responses import StreamingResponse
    from starlette.background import BackgroundTask

    seq, events = srv.start(req)
    if not req.stream:
        return await _collect(srv, request, req, seq, events, final)
    # background: runs even when the client leaves before the body starts.
    return StreamingResponse(_sse_body(srv, req, seq, events, chunk, kind), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(srv.batch.cancel, seq))


def _completion_shapes(srv, cid: str, created: int):
    """(chunk, final) of /v1/completions: OpenAI's text_completion objects."""
    def chunk(text, finish):
        return {"id": cid, "object": "text_completion", "created": created, "model": srv.model_id,
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

    def final(text, finish, usage):
        c = chunk(text, finish)
        c["usage"] = usage
        return c
    return chunk, final


def _chat_shapes(srv, cid: str, created: int):
    """(chunk, final) of /v1/chat/completions: chat.completion(.chunk) objects."""
    def chunk(text, finish):
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": srv.model_id,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def final(text, finish, usage):
        return {"id": cid, "object": "chat.completion", "created": created, "model": srv.model_id,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage}
    return chunk, final


def _add_generation_routes(app, srv) -> None:
    from fastapi import Request

    async def generate(request: Request, chat: bool):
        srv.check_ready()
        body = await _read_json(request, srv.limits.max_body_bytes, srv.limits.body_timeout)
        srv.check_model(body)
        # Off the event loop: a prompt of megabytes takes a while to tokenize, and the loop
        # serves every other stream meanwhile.
        prompt = await asyncio.to_thread(srv.chat_prompt if chat else srv.completion_prompt, body)
        req = srv.gen_request(body, prompt, chat=chat)
        srv.check_limits(body, req, chat)
        shapes, prefix = (_chat_shapes, "chatcmpl") if chat else (_completion_shapes, "cmpl")
        chunk, final = shapes(srv, f"{prefix}-{uuid.uuid4().hex}", int(time.time()))
        return await _run(srv, request, req, chunk, final, "chat" if chat else "text")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)


def _add_info_routes(app, srv) -> None:
    from fastapi.responses import JSONResponse, Response

    def model_card():
        return {"id": srv.model_id, "object": "model", "created": srv.created, "owned_by": "ternary-engine",
                "context_length": srv.ctx}

    @app.get("/v1/models")
    async def models():   # what is loaded: nothing until warmed up
        return {"object": "list", "data": [model_card()] if srv.ready else []}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != srv.model_id:
            raise ApiError(404, f"The model '{name}' does not exist.", "model", "model_not_found")
        srv.check_ready()   # known, but not loaded yet: 503
        return model_card()

    @app.get("/health")
    async def health():
        if not srv.ready:
            if srv.load_error:
                return JSONResponse({"status": "error", "message": srv.load_error}, status_code=503)
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})
        occ = srv.batch.occupancy()
        ok = occ["engine_alive"]
        occ.update(in_flight=srv.in_flight.active, max_in_flight=srv.in_flight.limit,
                   kv_dtype=srv.batch.caches[0].dtype)
        return JSONResponse({"status": "ok" if ok else "error", "model": srv.model_id, "ctx": srv.ctx, **occ},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(srv.metrics.render(), media_type=srv.metrics.content_type)


# -- command line ----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, as ternary-run
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ternary-serve",
                description="Serve a ternary (BitNet b1.58) .tpk model over an OpenAI-compatible HTTP API "
                            "(/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics; a chat "
                            "page at /) with continuous batching: concurrent requests share each decode "
                            "step.")
    p.add_argument("model", nargs="?", default=None, help="the .tpk model (default: the embedded model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the kernels (default: the number of physical cores)")
    p.add_argument("--max-batch", type=int, default=8, metavar="B",
                   help="sequences generated together, each with its own KV cache slot (default 8)")
    p.add_argument("--queue", type=int, default=64, metavar="Q",
                   help="requests that may wait for a slot; beyond it requests get 429 (default 64)")
    p.add_argument("--ctx", type=int, default=None, metavar="C",
                   help="context per request in tokens, prompt plus completion (default: the model's "
                        "max_position, at most 4096); KV memory is max-batch x ctx")
    p.add_argument("--kv-dtype", default=DEFAULT_KV_DTYPE, choices=KV_DTYPES,
                   help=f"KV cache dtype (default {DEFAULT_KV_DTYPE}; int8: about 0.27x f32's memory)")
    p.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK, metavar="T",
                   help="prompt tokens run per step while others are generating (default "
                        f"{DEFAULT_PREFILL_CHUNK}): smaller keeps their tokens flowing, larger "
                        "answers new prompts sooner")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients pass as 'model' (default: the file name without .tpk)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_safety_args(p)
    return p


def _add_safety_args(p) -> None:
    """The API key and the request limits (docs/server.md, "Safety")."""
    g = p.add_argument_group("safety")
    g.add_argument("--api-key", default=os.environ.get("TERNARY_API_KEY") or None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health and the chat page "
                        "(default: the environment variable TERNARY_API_KEY; unset: no key)")
    g.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body; larger get 413 (default {MAX_BODY_BYTES})")
    g.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_S, metavar="S",
                   help=f"seconds a client may take to send its request body; slower get 408 "
                        f"(default {BODY_TIMEOUT_S:g})")
    g.add_argument("--max-prompt-tokens", type=int, default=None, metavar="N",
                   help="longest prompt in tokens; longer get 400 (default: what fits the context)")
    g.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="largest max_tokens a request may ask for (400 beyond; a request without one "
                        "gets at most N) (default: what fits the context)")
    g.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                   help="generation requests in flight, streams included; more get 429 with Retry-After "
                        "(default: max-batch + queue)")
    g.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM, seconds to let in-flight requests finish before cutting them "
                        "(default 30)")


def _require_positive(args, parser, names) -> None:
    """parser.error for any of the flags `names` given below 1."""
    for name in names:
        v = getattr(args, name)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _limits(args, parser) -> Limits:
    _require_positive(args, parser, ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_concurrency"))
    if args.shutdown_timeout < 0:
        parser.error(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    if not args.body_timeout > 0:
        parser.error(f"--body-timeout must be > 0, got {args.body_timeout}")
    return Limits(max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
                  max_prompt_tokens=args.max_prompt_tokens,
                  max_tokens=args.max_tokens, max_concurrency=args.max_concurrency, api_key=args.api_key)


def _exit_cleanly(signum, frame):
    """SIGTERM before uvicorn listens (still loading), and again after its graceful shutdown:
    uvicorn re-raises the signal it caught once it has drained, which by default would end the
    process with status 143. Either way the process has nothing left to do: status 0."""
    raise SystemExit(0)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _require_positive(args, parser, ("threads", "max_batch", "ctx", "prefill_chunk"))
    if args.queue < 0:
        parser.error(f"--queue must be >= 0, got {args.queue}")
    limits = _limits(args, parser)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _exit_cleanly)

    import uvicorn

    from engine import Engine
    from engine.formats.tpk import TpkError

    try:
        engine = Engine(args.model, threads=args.threads, ctx=args.ctx, kv_dtype=args.kv_dtype)
    except (TpkError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batch = Batch(engine.model, max_batch=args.max_batch, max_queue=args.queue, prefill_chunk=args.prefill_chunk)
    model_id = model_id_of(engine, args.model_name)
    kv = batch.caches[0].nbytes
    log.info("model %s: ctx %d, %d slots, KV cache up to %.0f MB per slot (%.0f MB in all, touched lazily)",
             model_id, engine.ctx, args.max_batch, kv / 2**20, kv * args.max_batch / 2**20)
    if not limits.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach it can use it "
                    "(--api-key or TERNARY_API_KEY)", args.host)
    app = create_app(engine, batch, model_id, limits=limits)
    # SIGTERM: uvicorn stops accepting, lets in-flight requests (streams included) finish for
    # up to --shutdown-timeout, then the app's lifespan closes the batch.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
