"""Request admission for ternary-serve, as pure ASGI middleware (so a streamed response counts
until its last byte): an API key on every route but the public ones, and a cap on concurrent
generation requests.

With an API key set, every path needs `Authorization: Bearer <key>` except PUBLIC_PATHS and
/static/ (the chat page, which asks for the key and sends it itself): the same split as
llama.cpp's server, whose --api-key leaves /health and the web UI open and guards the rest,
/metrics included. Refusals are OpenAI-style error bodies: 401 invalid_api_key (as OpenAI
answers a wrong key), 429 rate_limit_exceeded with Retry-After past the concurrency cap.
"""
from __future__ import annotations

import hmac
import json

PUBLIC_PATHS = frozenset({"/", "/health", "/favicon.ico"})
GENERATION_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


async def send_error(send, status: int, body: dict, headers=()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data})


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def bearer_token(scope) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyGuard:
    """401 for a request to a guarded path without the right bearer token."""

    def __init__(self, app, api_key: str):
        if not api_key:
            raise ValueError("ApiKeyGuard needs a non-empty key")
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or is_public(scope["path"]):
            return await self.app(scope, receive, send)
        token = bearer_token(scope)
        # compare_digest: the time taken does not tell how much of a guess was right.
        if token is not None and hmac.compare_digest(token, self.key):
            return await self.app(scope, receive, send)
        message = ("Missing API key: send the header 'Authorization: Bearer <key>'." if token is None else
                   "Incorrect API key provided.")
        await send_error(send, 401, error_body(message, "invalid_request_error", "invalid_api_key"),
                         [(b"www-authenticate", b"Bearer")])


class InFlight:
    """The generation requests in flight, and how many may be (None: no cap)."""

    def __init__(self, limit: int | None):
        if limit is not None and limit < 1:
            raise ValueError(f"the concurrency limit must be >= 1, got {limit}")
        self.limit, self.active = limit, 0


class ConcurrencyLimit:
    """At most in_flight.limit generation requests in flight, from their first byte in to
    their last byte out; one more gets 429 at once (it never waits, so it holds nothing)."""

    def __init__(self, app, in_flight: InFlight):
        self.app, self.in_flight = app, in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            return await self.app(scope, receive, send)
        f = self.in_flight
        if f.limit is not None and f.active >= f.limit:   # one event loop: no race to the add
            return await send_error(send, 429, error_body(
                f"The server is busy: {f.active} requests are in flight, the limit is {f.limit}; "
                f"retry later.", "requests", "rate_limit_exceeded"), [(b"retry-after", b"1")])
        f.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            f.active -= 1
