"""ternary-serve on Ray Serve: N replicas of the server's own FastAPI app (engine/serve/server.py,
create_app), each a Ray actor process with its own Engine, Batch and kernel threads, behind Ray
Serve's HTTP proxy. Needs the [cluster] extra (ray[serve]); nothing else in engine imports ray.

    ternary-serve model.tpk --replicas 2 --threads 1 --port 8000       # a local Ray cluster
    ternary-serve model.tpk --replicas 4 --threads 8 --ray-address auto  # join `ray start`'s
    serve run engine.serve.cluster:app                                 # embedded model, 1 replica
    serve run engine.serve.cluster:build_app model=m.tpk replicas=4 threads=8

Every route, streaming included, is the single-process server's: a replica builds the app
with create_app and Ray Serve's ingress runs it (its lifespan too, so a replica stopping
closes its Batch). Each response carries X-Ternary-Replica: the id of the replica that
answered. Each replica asks Ray for --threads CPUs (num_cpus), so Ray places replicas where
that many cores are free and a replica's kernels run that many threads; a replica warms up
(one forward) before Ray routes requests to it. A replica takes max-batch + queue requests
at once (max_ongoing_requests); beyond that requests wait in Ray's router, not in a 429.
A replica sends a stream's events at most once per stream_interval (coalesce.py): each send
is a Ray message through the proxy, and one per token took CPU from the kernels.
"""
import logging
import os
import signal
import sys
import threading

log = logging.getLogger("ternary.cluster")
REPLICA_HEADER = "x-ternary-replica"
APP_NAME = "ternary"
# Ray Serve settings for a replica: run the app on the replica's own event loop, not a second
# one in another thread (every streamed chunk would hop between the two loops and threads,
# taking the GIL from the engine thread each time). The app blocks no loop: tokenizing runs
# in a worker thread, the kernels in the engine thread.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
# ... and for the HTTP proxy of a local cluster this process starts: route on the proxy's
# loop instead of a router loop in a thread of its own (one thread hop less per request and
# per streamed chunk).
PROXY_ENV = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# Each ASGI send of a replica is a Ray message to the proxy and a write there: one per token
# costs both CPU the replicas' kernels need (benchmarks/RESULTS.md, "Ray Serve"). 50 ms of
# tokens per chunk is below what a reader sees; the first token still goes out at once.
STREAM_INTERVAL_S = 0.05
# build_app's options: name -> (type, default); the CLI's flags of the same names.
OPTIONS = {"model": (str, None), "replicas": (int, 1), "threads": (int, 1), "ctx": (int, None),
           "max_batch": (int, 8), "queue": (int, 64), "prefill_chunk": (int, None), "model_name": (str, None),
           "kv_dtype": (str, None),   # None: the engine's default (kvcache.DEFAULT_KV_DTYPE)
           # seconds a replica gathers a stream's SSE events into one body chunk (0: one per event)
           "stream_interval": (float, STREAM_INTERVAL_S),
           # the safety settings (server.Limits; None: the server's default) and the SIGTERM drain,
           # which Ray applies per replica (graceful_shutdown_timeout_s)
           "api_key": (str, None), "max_body_bytes": (int, None), "body_timeout": (float, None),
           "max_prompt_tokens": (int, None), "max_tokens": (int, None), "max_concurrency": (int, None),
           "shutdown_timeout": (float, 30.0)}
LIMIT_OPTIONS = ("api_key", "max_body_bytes", "body_timeout", "max_prompt_tokens", "max_tokens",
                 "max_concurrency")


class ReplicaHeader:
    """ASGI middleware: every HTTP response gets X-Ternary-Replica: <replica id>."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)
        await self.app(scope, receive, send_tagged)


def replica_app(opts: dict, replica: str):
    """One replica's app: the engine loaded and warmed up here (so the replica is ready when
    Ray sees its constructor return), then create_app over it, tagged with the replica id."""
    from engine import Engine
    from engine.runtime.batch import DEFAULT_PREFILL_CHUNK, Batch
    from engine.serve.server import Limits, create_app, model_id_of, warm_up

    from engine.serve.coalesce import CoalesceBody

    kv = {} if opts["kv_dtype"] is None else {"kv_dtype": opts["kv_dtype"]}
    engine = Engine(opts["model"], threads=opts["threads"], ctx=opts["ctx"], **kv)
    warm_up(engine)
    batch = Batch(engine.model, max_batch=opts["max_batch"], max_queue=opts["queue"],
                  prefill_chunk=opts["prefill_chunk"] or DEFAULT_PREFILL_CHUNK)
    model_id = model_id_of(engine, opts["model_name"])
    limits = Limits(**{k: opts[k] for k in LIMIT_OPTIONS if opts[k] is not None})
    app = create_app(engine, batch, model_id, warmup=lambda e: None, limits=limits)   # warmed up above
    app.add_middleware(CoalesceBody, interval=opts["stream_interval"])
    app.add_middleware(ReplicaHeader, replica=replica)
    log.info("replica %s: model %s, %d threads", replica, model_id, opts["threads"])
    return app


def options(args: dict) -> dict:
    """build_app's {name: value} (values may be strings, as `serve run` passes them) -> typed
    options with defaults; ValueError for unknown names and bad values."""
    unknown = sorted(set(args) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    out = {}
    for name, (kind, default) in OPTIONS.items():
        v = args.get(name, default)
        if v is not None and kind in (int, float):
            try:
                v = kind(v)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                 f"got {v!r}") from None
            low = 0 if name in ("queue", "shutdown_timeout", "stream_interval") else 1
            if v < low or (name == "body_timeout" and not v > 0):
                raise ValueError(f"{name} must be {'> 0' if name == 'body_timeout' else f'>= {low}'}, got {v}")
        out[name] = v
    if out["kv_dtype"] is not None:
        from engine.runtime.kvcache import check_kv_dtype
        check_kv_dtype(out["kv_dtype"])   # ValueError naming the choices
    return out


def _deployment():
    """The Ray Serve deployment class (built on first use: importing this module needs no ray)."""
    from ray import serve

    @serve.ingress()
    class TernaryReplica:
        def __init__(self, opts: dict):
            self.opts = opts

        def __serve_build_asgi_app__(self):   # called by Ray after __init__, in the replica
            return replica_app(self.opts, serve.get_replica_context().replica_id.unique_id)

        def check_health(self):   # Ray restarts a replica whose engine thread died
            srv = self.app.state.server   # self.app: Ray's ASGI wrapper's, the app built above
            if srv.load_error or (srv.ready and not srv.batch.occupancy()["engine_alive"]):
                raise RuntimeError(srv.load_error or "the engine thread died")
    return TernaryReplica


def build_app(args: dict | None = None):
    """A Ray Serve application (`serve run engine.serve.cluster:build_app key=value ...`) of
    OPTIONS; each replica reserves `threads` CPUs."""
    from ray import serve

    opts = options(dict(args or {}))
    opts["api_key"] = opts["api_key"] or os.environ.get("TERNARY_API_KEY") or None  # as the server does
    cls = serve.deployment(name="TernaryServe", num_replicas=opts["replicas"],
                           ray_actor_options={"num_cpus": opts["threads"],
                                              "runtime_env": {"env_vars": REPLICA_ENV}},
                           logging_config={"enable_access_log": False},   # a log line per request
                           graceful_shutdown_timeout_s=opts["shutdown_timeout"],
                           max_ongoing_requests=opts["max_batch"] + opts["queue"])(_deployment())
    return cls.bind({k: v for k, v in opts.items() if k != "replicas"})


def __getattr__(name):   # `serve run engine.serve.cluster:app`: the embedded model, defaults
    if name == "app":
        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- command line: ternary-serve ... --replicas N ---------------------------------------------------
def parser():
    """The server's parser (the same flags in both modes) plus the Ray Serve ones."""
    from engine.serve.server import _parser as server_parser

    p = server_parser()
    g = p.add_argument_group("Ray Serve (the [cluster] extra)")
    g.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="serve through Ray Serve with N replicas, each its own process with --threads "
                        "kernel threads (default --threads 1 then) and max-batch slots")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="the Ray cluster to join (\"auto\": the one `ray start` made on this machine; "
                        "host:6379 another head); default: start a local one for this process")
    g.add_argument("--stream-interval", type=float, default=STREAM_INTERVAL_S, metavar="S",
                   help="seconds a replica gathers a stream's events into one chunk through Ray's proxy "
                        f"(default {STREAM_INTERVAL_S:g}; the first token goes out at once; 0: one per token)")
    return p


def unforwarded(p, args) -> list[str]:
    """Server flags given that the replicas would not apply (any the server gains that OPTIONS
    lacks); a key counts even when it is the default (e.g. taken from the environment), since
    serving without it would open what the user meant to close."""
    handled = set(OPTIONS) | {"host", "port", "log_level", "ray_address"}
    return ["--" + k.replace("_", "-") for k, v in vars(args).items() if k not in handled
            and (v != p.get_default(k) or ("key" in k and v))]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    if args.replicas is None:
        if args.ray_address is not None:
            p.error("--ray-address needs --replicas")
        from engine.serve.server import main as server_main
        return server_main(argv)
    if unforwarded(p, args):
        p.error(f"{', '.join(unforwarded(p, args))}: not supported with --replicas yet")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        opts = options({k: getattr(args, k) for k in OPTIONS if k != "threads"} | {"threads": args.threads or 1})
    except ValueError as e:
        p.error(str(e))
    if args.model and args.ray_address is None and not os.path.isfile(args.model):
        print(f"error: {args.model}: no such file", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve
    except ImportError:
        print("error: --replicas needs Ray Serve: pip install 'ternary-engine[cluster]'", file=sys.stderr)
        return 2
    return _serve(ray, serve, args, opts)


def _serve(ray, serve, args, opts) -> int:
    """Deploy on the Ray cluster, serve until SIGINT / SIGTERM, then take the app down (and the
    local cluster, when this process started it)."""
    local = args.ray_address is None
    if local:   # Ray runs workers at nice 15 by default: replicas would lose the CPU to anything else
        os.environ.setdefault("RAY_worker_niceness", "0")
        for k, v in PROXY_ENV.items():
            os.environ.setdefault(k, v)
    # Ray puts the driver's working directory first on every worker's sys.path: started inside a
    # source checkout, replicas would import its engine/ (no compiled kernels) instead of the
    # installed one. So the driver runs from the installed package's parent directory.
    if opts["model"]:
        opts["model"] = os.path.abspath(opts["model"])
    os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    ray.init(address=args.ray_address, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        need = opts["replicas"] * opts["threads"]
        if need > cpus:
            if local:
                print(f"error: {opts['replicas']} replicas x {opts['threads']} threads need {need} CPUs; "
                      f"this machine has {cpus:g}", file=sys.stderr)
                return 2
            log.warning("%d replicas x %d threads need %d CPUs; the cluster has %g now", opts["replicas"],
                        opts["threads"], need, cpus)
        serve.start(http_options={"host": args.host, "port": args.port})
        try:
            serve.run(build_app(opts), name=APP_NAME, route_prefix="/")
        except RuntimeError as e:   # a replica failed to start; Ray's log above says why
            print(f"error: {e}", file=sys.stderr)
            return 1
        log.info("serving %d replicas on http://%s:%d", opts["replicas"], args.host, args.port)
        print(f"ternary-serve: {opts['replicas']} replicas ready on http://{args.host}:{args.port}", flush=True)
        while not stop.wait(1):
            pass
    finally:
        if local:
            serve.shutdown()
        else:   # leave the cluster's other applications (and Serve itself) running
            serve.delete(APP_NAME)
        ray.shutdown()
    return 0
