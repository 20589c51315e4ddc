"""engine/serve/coalesce.py: a streamed body's chunks gathered into fewer sends, the first at
once, every byte delivered in order, the end flushing the rest; no timer left behind."""
import asyncio

import pytest

from engine.serve.coalesce import CoalesceBody


def _app(chunks, gap: float, log=None):
    """An ASGI app streaming chunks (gap seconds apart), then an empty last body; log gets
    ("app", chunk) before each chunk's send."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for c in chunks:
            if log is not None:
                log.append(("app", c))
            await send({"type": "http.response.body", "body": c, "more_body": True})
            await asyncio.sleep(gap)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return app


def _run(app, interval, log=None):
    """-> [(seconds since the start, message)] of every send the middleware made (each also
    appended to log as ("out", body))."""
    async def main():
        loop = asyncio.get_running_loop()
        t0, sent = loop.time(), []

        async def send(m):
            sent.append((loop.time() - t0, m))
            if log is not None and m["type"] == "http.response.body":
                log.append(("out", m["body"]))
        await CoalesceBody(app, interval)({"type": "http"}, None, send)
        await asyncio.sleep(3 * interval)   # a leftover timer would send now
        return sent
    return asyncio.run(main())


def test_chunks_are_gathered_first_at_once_nothing_lost():
    chunks = [f"data: {i}\n\n".encode() for i in range(40)]
    log = []
    sent = _run(_app(chunks, 0.005, log), 0.05, log)   # 40 chunks over >= 0.2 s, a send per 50 ms
    bodies = [m for _, m in sent if m["type"] == "http.response.body"]
    assert sent[0][1]["type"] == "http.response.start"
    assert b"".join(m["body"] for m in bodies) == b"".join(chunks)
    # the first token is not held back: sent before the app makes the second
    assert log[:3] == [("app", chunks[0]), ("out", chunks[0]), ("app", chunks[1])]
    assert len(bodies) <= len(chunks) // 2   # gathered: about one send per 10 chunks
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    times = [t for t, m in sent if m["type"] == "http.response.body" and m["more_body"]]
    assert all(b - a >= 0.045 for a, b in zip(times, times[1:]))   # one send per interval at most


def test_slow_chunks_pass_straight_through_and_zero_interval_is_off():
    chunks = [b"a", b"b", b"c"]
    bodies = [m["body"] for _, m in _run(_app(chunks, 0.03), 0.01) if m["type"] == "http.response.body"]
    assert bodies == [b"a", b"b", b"c", b""]   # slower than the interval: nothing waits
    bodies = [m["body"] for _, m in _run(_app(chunks, 0), 0) if m["type"] == "http.response.body"]
    assert bodies == [b"a", b"b", b"c", b""]


def test_the_last_chunk_carries_what_is_buffered():
    chunks = [b"x%d" % i for i in range(5)]
    sent = _run(_app(chunks, 0), 10.0)   # everything after the first waits for the end
    bodies = [m for _, m in sent if m["type"] == "http.response.body"]
    assert [(m["body"], m["more_body"]) for m in bodies] == [(b"x0", True), (b"x1x2x3x4", False)]


def test_an_app_error_leaves_no_timer():
    async def failing(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for c in (b"1", b"2"):
            await send({"type": "http.response.body", "body": c, "more_body": True})
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        _run(failing, 0.05)

    async def check():   # the buffered b"2" is dropped with its dead response, not sent later
        sent = []

        async def send(m):
            sent.append(m)
        with pytest.raises(RuntimeError):
            await CoalesceBody(failing, 0.05)({"type": "http"}, None, send)
        await asyncio.sleep(0.15)
        return [m.get("body") for m in sent]
    assert asyncio.run(check()) == [None, b"1"]


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="interval must be >= 0"):
        CoalesceBody(None, -1)
