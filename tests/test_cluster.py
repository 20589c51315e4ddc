"""ternary-serve --replicas 2 (engine/serve/cluster.py): a local Ray cluster started by the CLI in
a subprocess, 2 Ray Serve replicas of 1 thread each behind Ray's HTTP proxy. Concurrent
requests are spread over both replicas (X-Ternary-Replica names the one that answered), every
answer, streamed or not, completion or chat, has the text the single-process server gives at
temperature 0, and SIGTERM takes the whole Ray cluster down. Plus the options and the flags,
which need no cluster."""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import openai
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from served import free_port, server_env  # noqa: E402
from tiny_models import write_tiny  # noqa: E402

from engine.serve import cluster  # noqa: E402

MODEL_ID = "tiny"
CTX = 1024
MAX_BATCH, QUEUE = 2, 0     # each replica takes 2 requests at once; Ray's router holds the rest
PROMPTS = ["Once upon a time", "The cat liked to sleep in the sun", "x", "Numbers like 12345",
           "They played together every day", "The quick brown fox"]
BODY = {"model": MODEL_ID, "max_tokens": 160, "temperature": 0, "ignore_eos": True}
KEY, MAX_TOKENS = "cluster-test-key", 200   # --api-key and --max-tokens, forwarded to every replica
KV_DTYPE = "f32"   # --kv-dtype, not the default: /health shows each replica got it
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("cluster") / f"{MODEL_ID}.tpk", max_position=CTX))


@pytest.fixture(scope="module")
def reference(model_path):
    """The single-process server's answers (in process, FastAPI's TestClient)."""
    from fastapi.testclient import TestClient
    from engine import Engine
    from engine.runtime.batch import Batch
    from engine.serve.server import create_app

    eng = Engine(model_path, threads=1, ctx=CTX, kv_dtype=KV_DTYPE)
    with TestClient(create_app(eng, Batch(eng.model, max_batch=MAX_BATCH, max_queue=8), MODEL_ID)) as c:
        deadline = time.monotonic() + 30
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the in-process server did not warm up"
            time.sleep(0.05)
        texts = {p: c.post("/v1/completions", json={**BODY, "prompt": p}).json()["choices"][0]["text"]
                 for p in PROMPTS}
        chat = c.post("/v1/chat/completions", json={**BODY, "messages": CHAT}).json()
    return texts, chat["choices"][0]["message"]["content"]


def _ray_processes(marker: str) -> list[str]:
    """Command lines of live (not zombie) processes that mention marker (the cluster's temp dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{pid}: {cmd[:120]}")
    return found


@pytest.fixture(scope="module")
def cluster_server(model_path, tmp_path_factory):
    """`python -m engine.serve model --replicas 2 --threads 1`; its Ray cluster lives in a temp
    dir of its own (short: Ray's socket paths must fit 107 bytes) -> (base url, proc, temp dir)."""
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="tray-")
    env = server_env({"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"})
    log = open(tmp_path_factory.mktemp("cluster-log") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "engine.serve", model_path, "--replicas", "2", "--threads", "1",
                             "--max-batch", str(MAX_BATCH), "--queue", str(QUEUE), "--ctx", str(CTX),
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             "--api-key", KEY, "--max-tokens", str(MAX_TOKENS), "--kv-dtype", KV_DTYPE],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"ternary-serve --replicas exited with {proc.returncode}:\n{log.read()[-4000:]}")
        log.seek(0)
        if "replicas ready on" in log.read():   # printed once serve.run saw every replica running
            break
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGTERM)
            pytest.fail("the Ray Serve application did not start within 120 s")
        time.sleep(0.25)
    yield base, proc, ray_tmp
    if proc.poll() is None:      # test_sigterm_stops_ray_cleanly did not run
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _complete(base, prompt, start):
    start.wait()
    r = httpx.post(base + "/v1/completions", json={**BODY, "prompt": prompt}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.headers[cluster.REPLICA_HEADER], r.json()["choices"][0]["text"]


def _stream(base, prompt, start):
    """A streamed completion read as server-sent events -> (replica, text, ended with [DONE])."""
    start.wait()
    pieces, done = [], False
    with httpx.stream("POST", base + "/v1/completions", json={**BODY, "prompt": prompt, "stream": True},
                      headers=AUTH, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
        return r.headers[cluster.REPLICA_HEADER], "".join(pieces), done


def _at_once(fn, base, prompts):
    start = threading.Barrier(len(prompts))
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: fn(base, p, start), prompts))


def test_health_and_models_through_the_proxy(cluster_server):
    """/health answers ok on both replicas, each with the --kv-dtype given."""
    base, _, _ = cluster_server
    seen = set()
    for _ in range(12):
        h = httpx.get(base + "/health", timeout=10)
        assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["slots"] == MAX_BATCH
        assert h.json()["kv_dtype"] == KV_DTYPE
        seen.add(h.headers[cluster.REPLICA_HEADER])
    assert len(seen) == 2
    assert [m["id"] for m in httpx.get(base + "/v1/models", headers=AUTH, timeout=10).json()["data"]] == [MODEL_ID]


def test_replicas_enforce_the_api_key_and_limits(cluster_server):
    """--api-key and --max-tokens reach every replica: no or a wrong key is 401 (OpenAI's body),
    a max_tokens above the cap is 400, on whichever replica answers."""
    base, _, _ = cluster_server
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for _ in range(4):   # several requests: both replicas get some
            r = httpx.post(base + "/v1/completions", json={**BODY, "prompt": "x"}, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(base + "/v1/completions", json={**BODY, "prompt": "x", "max_tokens": MAX_TOKENS + 1},
                   headers=AUTH, timeout=30)
    assert r.status_code == 400, r.text


def test_concurrent_requests_spread_over_replicas_with_single_process_answers(cluster_server, reference):
    """6 requests at once against 2 x 2 slots: both replicas answer, each text is the
    single-process server's."""
    base, _, _ = cluster_server
    texts, _ = reference
    results = _at_once(_complete, base, PROMPTS)
    assert [t for _, t in results] == [texts[p] for p in PROMPTS]
    assert len({replica for replica, _ in results}) == 2


def test_concurrent_streams_spread_over_replicas_with_single_process_answers(cluster_server, reference):
    base, _, _ = cluster_server
    texts, _ = reference
    results = _at_once(_stream, base, PROMPTS)
    assert [(t, done) for _, t, done in results] == [(texts[p], True) for p in PROMPTS]
    assert len({replica for replica, _, _ in results}) == 2


def test_openai_client_streams_chat_through_the_cluster(cluster_server, reference):
    base, _, _ = cluster_server
    _, chat_text = reference
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)
    stream = client.chat.completions.create(model=MODEL_ID, messages=CHAT, max_tokens=BODY["max_tokens"],
                                            temperature=0, stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == chat_text


def test_sigterm_stops_ray_cleanly(cluster_server):
    """SIGTERM: the CLI exits 0 and no process of its Ray cluster is left."""
    base, proc, ray_tmp = cluster_server
    assert _ray_processes(ray_tmp), "the Ray cluster's processes were not found (wrong marker?)"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    deadline = time.monotonic() + 30
    while _ray_processes(ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(ray_tmp) == []
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/health", timeout=2)


# -- no cluster needed --------------------------------------------------------------------------------
def test_options_take_serve_run_strings_and_refuse_bad_ones():
    opts = cluster.options({"model": "m.tpk", "replicas": "3", "threads": "2", "queue": "0"})
    assert opts["replicas"] == 3 and opts["threads"] == 2 and opts["queue"] == 0 and opts["max_batch"] == 8
    with pytest.raises(ValueError, match="unknown option.*replica"):
        cluster.options({"replica": 2})
    with pytest.raises(ValueError, match="threads must be an integer"):
        cluster.options({"threads": "two"})
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        cluster.options({"replicas": 0})
    opts = cluster.options({"api_key": "k", "body_timeout": "2.5", "max_tokens": "64"})
    assert opts["api_key"] == "k" and opts["body_timeout"] == 2.5 and opts["max_tokens"] == 64
    with pytest.raises(ValueError, match="body_timeout must be > 0"):
        cluster.options({"body_timeout": "0"})
    opts = cluster.options({"kv_dtype": "int8", "stream_interval": "0"})
    assert opts["kv_dtype"] == "int8" and opts["stream_interval"] == 0.0
    assert cluster.options({})["kv_dtype"] is None   # the engine's default
    with pytest.raises(ValueError, match="unknown KV cache dtype 'f8'"):
        cluster.options({"kv_dtype": "f8"})
    with pytest.raises(ValueError, match="stream_interval must be >= 0"):
        cluster.options({"stream_interval": "-0.1"})


def test_server_flags_the_replicas_would_not_apply_are_refused():
    """A flag the single-process server has and the replicas do not forward is an error, not
    silently dropped; a key counts even at its default (read from the environment)."""
    p = cluster.parser()
    assert cluster.unforwarded(p, p.parse_args(["--replicas", "2", "--threads", "1", "--max-batch", "4"])) == []
    assert cluster.unforwarded(p, p.parse_args(["--replicas", "2", "--kv-dtype", "int8"])) == []   # forwarded
    p.add_argument("--test-only-timeout", type=float, default=30.0)   # stand-ins for flags a server
    p.add_argument("--test-only-key", default="from-env")             # may gain later
    args = p.parse_args(["--replicas", "2", "--test-only-timeout", "5"])
    assert cluster.unforwarded(p, args) == ["--test-only-timeout", "--test-only-key"]


def test_flags_help_and_no_ray_without_replicas():
    """--help lists the server's flags and the cluster's; --ray-address alone is an error;
    importing the entry point and the cluster module loads no ray."""
    env = server_env()
    h = subprocess.run([sys.executable, "-m", "engine.serve", "--help"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert h.returncode == 0 and "--replicas N" in h.stdout and "--max-batch" in h.stdout
    bad = subprocess.run([sys.executable, "-m", "engine.serve", "--ray-address", "auto"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--ray-address needs --replicas" in bad.stderr
    code = "import sys, engine.serve.__main__, engine.serve.cluster; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
