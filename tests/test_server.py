"""ternary-serve: continuous batching equals Engine.generate token for token; the HTTP server
(a subprocess on 127.0.0.1) driven by the real `openai` client: completions and chat, streamed
and not, seeded output identical to Engine.generate, OpenAI-style 400s, 429 beyond the queue,
and 20 streaming clients that disconnect mid-stream leaving every slot free. In process
(FastAPI's TestClient): /metrics counters after known traffic, and /health while the warm-up
is held back."""
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from served import Served, server_env  # noqa: E402
from tiny_models import write_tiny  # noqa: E402

import engine  # noqa: E402
from engine import Engine  # noqa: E402
from engine.runtime import batch as B  # noqa: E402
from engine.runtime.sampling import Sampler, SamplingParams  # noqa: E402

MODEL_ID = "tiny"
CTX = 2048
MAX_BATCH, QUEUE = 4, 16          # 20 requests fill slots + queue exactly
PROMPTS = ["Once upon a time", "The cat liked to sleep in the sun and to watch the birds in the garden. One",
           "x", "Numbers like 12345 and 2024", "They played together every day", "The quick brown fox"]
# The server's defaults are OpenAI's (no penalties), the engine's are its own: pass them all.
NO_PENALTY = dict(repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
SAMPLING = dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.0,
                frequency_penalty=0.0, presence_penalty=0.0)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("serve") / f"{MODEL_ID}.tpk", max_position=CTX))


@pytest.fixture(scope="module")
def eng(model_path):
    return Engine(model_path, threads=1)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("serve-log"), model_path, "--host", "127.0.0.1", "--threads", "1",
               "--max-batch", str(MAX_BATCH), "--queue", str(QUEUE), "--ctx", str(CTX), "--log-level", "warning")
    yield s.base
    s.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _health(base) -> dict:
    return httpx.get(base + "/health", timeout=10).json()


# -- the batch engine, in process ------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batch_equals_engine_generate(eng, temperature):
    """Staggered joins, prompts longer than the prefill chunk, fewer slots than requests: every
    sequence gets exactly Engine.generate's tokens (greedy, and seeded sampling)."""
    kw = dict(SAMPLING, temperature=temperature)
    prompts = [eng.tokenizer.encode(p) for p in PROMPTS]
    assert max(map(len, prompts)) > 5
    steps = [30, 17, 25, 1, 40, 9]
    refs = [eng.generate(p, max_new_tokens=n, seed=i, **kw) for i, (p, n) in enumerate(zip(prompts, steps))]
    vocab = eng.model.args.vocab_size
    batch = B.Batch(eng.model, max_batch=3, prefill_chunk=5)
    seqs = []
    for i, (p, n) in enumerate(zip(prompts, steps)):
        sampler = Sampler(SamplingParams(**{k: v for k, v in kw.items()}), vocab, seed=i)
        seqs.append(batch.submit(B.Sequence(p, n, sampler, eng.tokenizer.stop_ids)))
        for _ in range(i % 3):   # join while others prefill or decode
            batch.step()
    batch.run_until_done()
    assert [s.generated for s in seqs] == refs
    assert all(s.finish_reason in (B.STOP, B.LENGTH) for s in seqs)
    assert batch.occupancy()["busy"] == 0


def test_batch_cancel_and_queue(eng):
    vocab = eng.model.args.vocab_size
    greedy = lambda: Sampler(SamplingParams(temperature=0), vocab)  # noqa: E731
    batch = B.Batch(eng.model, max_batch=2, max_queue=1)
    a, b, c = (batch.submit(B.Sequence([5, 6, 7], 50, greedy())) for _ in range(3))
    with pytest.raises(B.QueueFull):
        batch.submit(B.Sequence([5], 5, greedy()))
    batch.step()
    assert batch.occupancy()["busy"] == 2 and batch.occupancy()["waiting"] == 1
    batch.cancel(a)
    batch.cancel(c)   # still waiting
    assert batch.occupancy()["busy"] == 1 and batch.occupancy()["waiting"] == 0
    assert a.finish_reason == c.finish_reason == B.CANCELLED
    batch.run_until_done()
    assert b.finish_reason == B.LENGTH and len(b.generated) == 50
    with pytest.raises(engine.ContextError):
        batch.submit(B.Sequence([1] * 10, CTX, greedy()))


def test_batch_isolates_failures(eng):
    """A sampler or callback that raises fails its own sequence only."""
    vocab = eng.model.args.vocab_size

    class Broken(Sampler):
        def __call__(self, logits, recent_ids=()):
            raise RuntimeError("broken sampler")

    def raising_callback(token):
        raise RuntimeError("client gone")

    batch = B.Batch(eng.model, max_batch=3)
    bad = batch.submit(B.Sequence([5, 6], 8, Broken(SamplingParams(temperature=0), vocab)))
    noisy = batch.submit(B.Sequence([5, 6], 8, Sampler(SamplingParams(temperature=0), vocab),
                                    on_token=raising_callback))
    good = batch.submit(B.Sequence([7, 8], 8, Sampler(SamplingParams(temperature=0), vocab)))
    batch.run_until_done()
    assert bad.finish_reason == B.ERROR and "broken" in str(bad.error)
    assert noisy.finish_reason == good.finish_reason == B.LENGTH
    assert good.generated == eng.generate([7, 8], max_new_tokens=8, temperature=0, ignore_eos=True)


# -- the server ------------------------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    h = _health(server)
    assert h["status"] == "ok" and h["slots"] == MAX_BATCH and h["busy"] == 0 and h["ctx"] == CTX


def test_completions_greedy_match_engine(client, eng):
    prompt = PROMPTS[0]
    want = eng.generate(prompt, max_new_tokens=24, temperature=0, **NO_PENALTY)
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=0)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason in ("stop", "length") and r.object == "text_completion"
    assert r.usage.prompt_tokens == len(eng.tokenizer.encode(prompt))
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=24, temperature=0, stream=True)]
    assert "".join(pieces) == want and len(pieces) > 1


def test_token_ids_in_and_out(client, eng):
    """A prompt of token ids, and the extension return_token_ids: ids equal Engine.generate's."""
    ids = eng.tokenizer.encode(PROMPTS[3])
    want = eng.generate(ids, max_new_tokens=12, temperature=0, **NO_PENALTY)
    r = client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0,
                                  extra_body={"return_token_ids": True})
    assert r.choices[0].token_ids == want
    chunks = list(client.completions.create(model=MODEL_ID, prompt=ids, max_tokens=12, temperature=0,
                                            stream=True, extra_body={"return_token_ids": True}))
    assert [t for c in chunks for t in c.choices[0].token_ids] == want


def test_seeded_sampling_matches_engine(client, eng):
    prompt = PROMPTS[1]
    want = eng.generate(prompt, max_new_tokens=20, seed=7, **SAMPLING)
    extra = {"top_k": SAMPLING["top_k"], "min_p": SAMPLING["min_p"]}
    for stream in (False, True):
        r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=20, seed=7, stream=stream,
                                      temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"],
                                      extra_body=extra)
        text = "".join(c.choices[0].text for c in r) if stream else r.choices[0].text
        assert text == want


def test_frequency_and_presence_penalties_match_engine(client, eng):
    prompt, pen = PROMPTS[0], dict(frequency_penalty=1.2, presence_penalty=0.8)
    want = eng.generate(prompt, max_new_tokens=24, seed=3, **dict(SAMPLING, **pen))
    assert want != eng.generate(prompt, max_new_tokens=24, seed=3, **SAMPLING)
    r = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=24, seed=3,
                                  temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"],
                                  extra_body={"top_k": SAMPLING["top_k"], "min_p": SAMPLING["min_p"]}, **pen)
    assert r.choices[0].text == want


def test_stop_string(client, eng):
    full = eng.generate(PROMPTS[0], max_new_tokens=24, temperature=0, **NO_PENALTY)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    want = eng.generate(PROMPTS[0], max_new_tokens=24, temperature=0, **NO_PENALTY, stop=[stop])
    r = client.completions.create(model=MODEL_ID, prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=stop)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"


def test_chat_matches_engine(client, eng):
    messages = [{"role": "system", "content": "You are a cat."}, {"role": "user", "content": "Hello there"}]
    want = eng.chat(messages, max_new_tokens=20, temperature=0, **NO_PENALTY)
    r = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(eng.chat_ids(messages))
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=20,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-2].choices[0].finish_reason in ("stop", "length")


def test_concurrent_requests_match_alone(client, eng):
    """More requests than slots, all at once: each text equals its Engine.generate alone."""
    wants = [eng.generate(p, max_new_tokens=16 + 3 * i, temperature=0, **NO_PENALTY) for i, p in enumerate(PROMPTS)]

    def one(i):
        if i % 2:
            return "".join(c.choices[0].text for c in client.completions.create(
                model=MODEL_ID, prompt=PROMPTS[i], max_tokens=16 + 3 * i, temperature=0, stream=True))
        return client.completions.create(model=MODEL_ID, prompt=PROMPTS[i], max_tokens=16 + 3 * i,
                                         temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        assert list(pool.map(one, range(len(PROMPTS)))) == wants


BAD = {
    "n": ("completions", {"prompt": "x", "n": 2}),
    "logprobs": ("completions", {"prompt": "x", "logprobs": 2}),
    "chat-logprobs": ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}),
    "max_tokens-type": ("completions", {"prompt": "x", "max_tokens": "ten"}),
    "max_tokens-bool": ("completions", {"prompt": "x", "max_tokens": True}),
    "temperature-type": ("completions", {"prompt": "x", "temperature": "hot"}),
    "temperature-range": ("completions", {"prompt": "x", "temperature": 5}),
    "top_p-range": ("completions", {"prompt": "x", "top_p": 0}),
    "stop-type": ("completions", {"prompt": "x", "stop": [1, 2]}),
    "seed-type": ("completions", {"prompt": "x", "seed": 1.5}),
    "too-long": ("completions", {"prompt": "x", "max_tokens": CTX}),
    "too-long-prompt": ("completions", {"prompt": list(range(3, 200)) * 11, "max_tokens": 1}),
    "token-range": ("completions", {"prompt": [1, 10**6]}),
    "two-prompts": ("completions", {"prompt": ["a", "b"]}),
    "no-prompt": ("completions", {}),
    "no-messages": ("chat/completions", {}),
    "bad-role": ("chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}),
    "image-part": ("chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}),
    "nan": ("completions", b'{"prompt": "x", "temperature": NaN}'),
    "frequency-penalty-range": ("completions", {"prompt": "x", "frequency_penalty": 2.5}),
    "presence-penalty-type": ("completions", {"prompt": "x", "presence_penalty": "high"}),
    "deep-json": ("completions", b"[" * 100000 + b"]" * 100000),
    "not-json": ("completions", b"{not json"),
    "not-object": ("completions", [1, 2]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_400(server, case):
    path, body = BAD[case]
    if isinstance(body, dict):
        body = {"model": MODEL_ID, **body}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server}/v1/{path}", content=content, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == "invalid_request_error"


def test_openai_client_sees_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_ID, prompt="x", n=2)
    assert e.value.status_code == 400 and e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as e:   # as OpenAI answers an unknown model
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and e.value.body["code"] == "model_not_found"


def test_disconnects_free_slots_and_queue_overflow_is_429(server, client, eng):
    """20 streams fill the 4 slots and the queue of 16; a 21st gets 429. Each client then reads
    a few chunks (the queued ones only once earlier clients left) and disconnects: afterwards no
    slot is busy, nothing waits, and the server still answers."""
    n = MAX_BATCH + QUEUE
    # Prompts whose first tokens make text at once (random weights can emit byte tokens that
    # are no UTF-8, which the stream holds back).
    prompts = [p for p in (f"Once upon a time {i}" for i in range(200))
               if len(list(eng.stream(p, max_new_tokens=6, temperature=0, **NO_PENALTY, ignore_eos=True))) >= 4][:n]
    assert len(prompts) == n
    opened = threading.Barrier(n + 1, timeout=30)
    release = threading.Event()
    body = dict(model=MODEL_ID, max_tokens=CTX - 64, temperature=0, stream=True, extra_body={"ignore_eos": True})

    def one(i):
        stream = client.completions.create(prompt=prompts[i], **body)
        try:
            opened.wait()
            assert release.wait(30)
            got = 0
            for chunk in stream:
                got += bool(chunk.choices and chunk.choices[0].text)
                if got == 3:
                    return got
            return got
        finally:
            stream.close()

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        opened.wait()   # every request has its 200 headers: 4 run, 16 wait
        h = _health(server)
        assert h["busy"] == MAX_BATCH and h["waiting"] == QUEUE
        with pytest.raises(openai.RateLimitError) as e:
            client.completions.create(prompt="one too many", **body)
        assert e.value.status_code == 429 and e.value.body["code"] == "rate_limit_exceeded"
        release.set()
        assert [f.result(timeout=60) for f in futures] == [3] * n
    # Left alone, the 20 requests would run ~40k more tokens (seconds of work): cancelled, the
    # slots are free within moments and the engine stops stepping.
    deadline = time.monotonic() + 3
    while (h := _health(server))["busy"] or h["waiting"]:
        assert time.monotonic() < deadline, f"slots still held after every client left: {h}"
        time.sleep(0.05)
    time.sleep(0.3)
    assert _health(server)["steps"] == h["steps"] and h["status"] == "ok"
    r = client.completions.create(model=MODEL_ID, prompt="still alive", max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1 or r.choices[0].finish_reason == "stop"


def test_non_streaming_client_that_leaves_frees_its_slot(server):
    """8 long non-streaming requests (4 run, 4 wait) whose clients time out: all are dropped."""
    body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": CTX - 64, "temperature": 0,
            "ignore_eos": True}

    def one(_):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(server + "/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.5))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    deadline = time.monotonic() + 2   # left alone: ~16k tokens of work
    while (h := _health(server))["busy"] or h["waiting"]:
        assert time.monotonic() < deadline, f"slots still held after the clients left: {h}"
        time.sleep(0.05)


@pytest.mark.parametrize("argv", [["/nonexistent/model.tpk"], ["--max-batch", "0"]])
def test_cli_user_errors_are_one_line(argv):
    r = subprocess.run([sys.executable, "-m", "engine.serve", *argv], capture_output=True, text=True,
                       env=server_env(), timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


# -- in-process apps: /metrics, /health while loading ----------------------------------------------
def _app(model_path, **kw):
    from engine.serve.server import create_app
    e = Engine(model_path, threads=1)
    return create_app(e, B.Batch(e.model, max_batch=2, max_queue=2), MODEL_ID, **kw)


def _wait_ready(c) -> None:
    deadline = time.monotonic() + 30
    while c.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the app did not warm up within 30 s"
        time.sleep(0.02)


def _metrics(c) -> dict:
    """{(sample name, labels as sorted tuple): value} of GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def test_metrics_count_requests_and_tokens(model_path, eng):
    """Two apps in one process, each with its own registry: after 2 plain and 1 streamed
    completion, 1 chat, a 400 and a 404, the counters moved by exactly those amounts."""
    from fastapi.testclient import TestClient
    with TestClient(_app(model_path)) as c, TestClient(_app(model_path)) as other:
        _wait_ready(c)
        before = _metrics(c)
        assert before[("ternary_slots", ())] == 2 and before[("ternary_slots_in_use", ())] == 0
        assert before[("ternary_queue_depth", ())] == 0 and before[("ternary_kv_positions_in_use", ())] == 0
        assert before[("ternary_kv_positions_capacity", ())] == 2 * CTX
        assert before.get(("ternary_completion_tokens_total", ()), 0) == 0
        body = {"model": MODEL_ID, "max_tokens": 7, "temperature": 0, "ignore_eos": True}
        prompt_tokens = 0
        for p in PROMPTS[:2]:
            r = c.post("/v1/completions", json={**body, "prompt": p})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7
            prompt_tokens += r.json()["usage"]["prompt_tokens"]
        with c.stream("POST", "/v1/completions", json={**body, "prompt": PROMPTS[2], "stream": True,
                                                       "max_tokens": 5}) as r:
            assert r.status_code == 200 and "".join(r.iter_text()).endswith("data: [DONE]\n\n")
        prompt_tokens += len(eng.tokenizer.encode(PROMPTS[2]))
        msgs = [{"role": "user", "content": "Hello"}]
        r = c.post("/v1/chat/completions", json={**body, "messages": msgs, "max_tokens": 3})
        assert r.status_code == 200
        prompt_tokens += len(eng.chat_ids(msgs))
        assert c.post("/v1/completions", json={"prompt": "x", "n": 2}).status_code == 400
        assert c.get("/nowhere").status_code == 404
        m = _metrics(c)
        req = lambda route, status: m.get(("ternary_requests_total", (("route", route), ("status", status))), 0)  # noqa: E731
        assert req("/v1/completions", "200") == 3 and req("/v1/completions", "400") == 1
        assert req("/v1/chat/completions", "200") == 1 and req("other", "404") == 1
        assert req("/metrics", "200") == 1   # the first scrape
        assert m[("ternary_completion_tokens_total", ())] == 7 + 7 + 5 + 3
        assert m[("ternary_prompt_tokens_total", ())] == prompt_tokens
        assert m[("ternary_time_to_first_token_seconds_count", ())] == 4
        assert m[("ternary_time_per_output_token_seconds_count", ())] == 6 + 6 + 4 + 2
        assert m[("ternary_time_to_first_token_seconds_sum", ())] > 0
        assert m[("ternary_batch_sequences_count", ())] == c.get("/health").json()["steps"] > 0
        assert m[("ternary_slots_in_use", ())] == 0 and m[("ternary_queue_depth", ())] == 0
        # the other app's registry saw none of it
        o = _metrics(other)
        assert o.get(("ternary_completion_tokens_total", ()), 0) == 0
        assert not any(k[0] == "ternary_requests_total" and dict(k[1])["route"] != "/metrics" for k in o)


def test_metrics_kv_and_queue_gauges_while_running(model_path):
    """With both slots generating and one request waiting, the gauges show it."""
    from engine.serve.server import Server
    e = Engine(model_path, threads=1)
    batch = B.Batch(e.model, max_batch=2, max_queue=2)
    srv = Server(e, batch, MODEL_ID)
    greedy = lambda: Sampler(SamplingParams(temperature=0), e.model.args.vocab_size)  # noqa: E731
    seqs = [batch.submit(B.Sequence([5, 6, 7], 10, greedy())) for _ in range(3)]
    batch.step()   # two admitted, prefilled (3 positions each), one waits
    from prometheus_client.parser import text_string_to_metric_families
    got = {s.name: s.value for f in text_string_to_metric_families(srv.metrics.render().decode())
           for s in f.samples}
    assert got["ternary_slots_in_use"] == 2 and got["ternary_queue_depth"] == 1
    assert got["ternary_kv_positions_in_use"] == 6
    assert got["ternary_batch_sequences_count"] == 1 and got["ternary_batch_sequences_sum"] == 2
    assert got["ternary_batch_rows_sum"] == 6
    for s in seqs:
        batch.cancel(s)


def test_health_is_loading_until_warmed_up(model_path):
    """Warm-up held back by an event: /health 503 loading, no models listed, generation 503;
    released: one forward runs, then 200 ok, the model is listed and generation works."""
    from fastapi.testclient import TestClient
    from engine.serve import server as S
    gate, forwards = threading.Event(), []

    def warmup(e):
        assert gate.wait(30)
        real = e.forward
        e.forward = lambda ids: forwards.append(list(ids)) or real(ids)
        try:
            S.warm_up(e)
        finally:
            e.forward = real

    with TestClient(_app(model_path, warmup=warmup)) as c:
        for _ in range(3):
            r = c.get("/health")
            assert r.status_code == 503 and r.json() == {"status": "loading"}
        assert c.get("/v1/models").json() == {"object": "list", "data": []}
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert c.get(f"/v1/models/{MODEL_ID}").status_code == 503
        assert not forwards
        gate.set()
        deadline = time.monotonic() + 30
        while (r := c.get("/health")).status_code != 200:
            assert r.json()["status"] == "loading" and time.monotonic() < deadline
            time.sleep(0.02)
        assert r.json()["status"] == "ok" and len(forwards) == 1 and forwards[0]
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == [MODEL_ID]
        assert c.get(f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "ignore_eos": True})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_health_reports_a_failed_warm_up(model_path):
    from fastapi.testclient import TestClient

    def warmup(e):
        raise RuntimeError("no memory for you")

    with TestClient(_app(model_path, warmup=warmup)) as c:
        deadline = time.monotonic() + 30
        while (r := c.get("/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "error" and "no memory" in r.json()["message"]
        r = c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and "no memory" in r.json()["error"]["message"]
