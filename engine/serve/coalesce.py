"""ASGI middleware that coalesces a streamed response's body chunks: at most one send per
`interval` seconds after the first. Behind Ray Serve every ASGI send a replica makes is a
message through Ray to the HTTP proxy and a write there, so one SSE event per token costs
the proxy and the replica CPU per token; batching the events of ~interval into one body
chunk cuts that while every event still arrives, whole and in order.

The first chunk (and any chunk after a quiet spell of at least `interval`) goes out at once,
so the time to first token is not delayed; a chunk arriving sooner waits in a buffer until
`interval` has passed since the previous send. The last chunk (more_body False) flushes the
buffer with it. Only the bytes' timing changes: the concatenation of the bodies is the same.
"""
import asyncio
import time


class CoalesceBody:
    """ASGI middleware: http.response.body chunks with more_body are sent at most once per
    interval seconds (the rest buffered and joined), the first at once."""

    def __init__(self, app, interval: float):
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self.app, self.interval = app, interval

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.interval == 0:
            return await self.app(scope, receive, send)
        out = _Buffered(send, self.interval)
        try:
            await self.app(scope, receive, out.send)
        finally:
            await out.close()


class _Buffered:
    """One response's sends: a buffer, the time of the last send, and the timer that flushes
    the buffer (a task sleeping until last + interval)."""

    def __init__(self, send, interval: float):
        self._send, self.interval = send, interval
        self.buf, self.last, self.timer, self.flushing = bytearray(), -1e18, None, False

    async def send(self, message):
        if message["type"] != "http.response.body":
            return await self._send(message)
        if not message.get("more_body", False):   # the end: everything buffered goes with it
            await self._stop_timer()
            body, self.buf = bytes(self.buf) + message.get("body", b""), bytearray()
            return await self._send({**message, "body": body})
        self.buf += message.get("body", b"")
        if self.timer is not None:   # a flush is due already
            return
        wait = self.last + self.interval - time.monotonic()
        if wait <= 0:
            await self._flush()
        else:
            self.timer = asyncio.ensure_future(self._flush_after(wait))

    async def _flush(self):
        body, self.buf = bytes(self.buf), bytearray()
        self.last = time.monotonic()
        if body:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _flush_after(self, wait: float):
        await asyncio.sleep(wait)
        self.flushing = True   # from here the send runs to its end (not cancelled midway)
        try:
            await self._flush()
        finally:
            self.timer, self.flushing = None, False

    async def _stop_timer(self):
        """Wait for a flush under way; cancel one still sleeping (its bytes stay in buf)."""
        timer, self.timer = self.timer, None
        if timer is None:
            return
        if self.flushing:
            await asyncio.shield(timer)
        else:
            timer.cancel()

    async def close(self):
        """The app returned or raised: no timer may outlive the response (bytes left in the
        buffer then belong to a response that never ended; the app's error says why)."""
        await self._stop_timer()
