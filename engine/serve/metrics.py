"""Prometheus metrics of one ternary-serve app, served as text at GET /metrics.

Every app has its own CollectorRegistry (never prometheus_client's global one), so several
apps in one process (tests, embedding) each count only their own requests.

    ternary_requests_total{route, status}      HTTP requests answered (route: the path template)
    ternary_prompt_tokens_total                 prompt tokens of accepted generation requests
    ternary_completion_tokens_total             tokens generated
    ternary_time_to_first_token_seconds         histogram: request accepted -> first token
    ternary_time_per_output_token_seconds       histogram: gap between consecutive tokens of a request
    ternary_batch_sequences                     histogram: sequences in each batched step
    ternary_batch_rows                          histogram: rows (tokens) in each batched step
    ternary_slots, ternary_slots_in_use         KV-cache slots, and those holding a request
    ternary_queue_depth                         requests waiting for a slot
    ternary_kv_positions_in_use, ternary_kv_positions_capacity   cached positions over all slots
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ternary_requests", "HTTP requests answered, by route template and status",
                                ["route", "status"], registry=r)
        self.prompt_tokens = Counter("ternary_prompt_tokens", "Prompt tokens of accepted generation requests",
                                     registry=r)
        self.completion_tokens = Counter("ternary_completion_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("ternary_time_to_first_token_seconds",
                              "Time from a generation request being accepted to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.token_latency = Histogram("ternary_time_per_output_token_seconds",
                                       "Time between consecutive tokens of one request",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batch_sequences = Histogram("ternary_batch_sequences", "Sequences in each batched step",
                                         buckets=SIZE_BUCKETS, registry=r)
        self.batch_rows = Histogram("ternary_batch_rows", "Rows (tokens) run in each batched step",
                                    buckets=SIZE_BUCKETS, registry=r)
        self._occupancy = lambda: {}
        for name, key, doc in (("ternary_slots", "slots", "KV-cache slots (max batch)"),
                               ("ternary_slots_in_use", "busy", "KV-cache slots holding a request (batch size)"),
                               ("ternary_queue_depth", "waiting", "Requests waiting for a slot"),
                               ("ternary_kv_positions_in_use", "kv_positions",
                                "Positions held in the KV caches of all slots"),
                               ("ternary_kv_positions_capacity", "kv_capacity",
                                "Positions the KV caches of all slots can hold")):
            Gauge(name, doc, registry=r).set_function(lambda key=key: float(self._occupancy().get(key, 0)))

    def watch(self, batch) -> None:
        """Read occupancy from batch at scrape time and observe its steps."""
        self._occupancy = batch.occupancy
        batch.on_step = self.on_step

    def on_step(self, sequences: int, rows: int) -> None:
        self.batch_sequences.observe(sequences)
        self.batch_rows.observe(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounter:
    """ASGI middleware: counts every HTTP response by route template and status (the status
    a streamed response starts with; 500 for a request that fails before answering)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = None

        async def send_counting(message):
            nonlocal status
            if message["type"] == "http.response.start" and status is None:
                status = message["status"]
                self.metrics.requests.labels(_route(scope), str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            if status is None:
                self.metrics.requests.labels(_route(scope), "500").inc()


def _route(scope) -> str:
    """The path template of the matching route ("/v1/models/{name:path}"), "other" for none,
    so unknown paths cannot grow the label set."""
    from starlette.routing import Match

    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "path", "other")
    return "other"
