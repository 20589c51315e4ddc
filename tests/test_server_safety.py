"""ternary-serve's safety defaults, against real servers (subprocesses of `python -m
engine.serve` on a tiny random model): the loopback default bind, the API key (flag and
TERNARY_API_KEY) on every route but /health and the chat page, the limits on body size,
prompt tokens, max_tokens and requests in flight (413, 400, 400, 429 + Retry-After, all
OpenAI-style JSON), and SIGTERM: no new connections, the open stream finishes with [DONE],
exit status 0. Also: nothing reads a file from outside with pickle."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from served import Served, server_env  # noqa: E402
from tiny_models import write_tiny  # noqa: E402

from engine import Engine  # noqa: E402
from engine.serve.server import MAX_BODY_BYTES, _parser  # noqa: E402

MODEL_ID = "tiny"
CTX = 8192
KEY = "s3cret-key"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("safety") / f"{MODEL_ID}.tpk", max_position=CTX))


@pytest.fixture(scope="module")
def eng(model_path):
    return Engine(model_path, threads=1)


def _served(model_path, log_dir, *args, env=None, host_flag=True) -> Served:
    """The tiny model served with 1 thread and a context of CTX (on 127.0.0.1 unless host_flag
    is False: the default bind is under test then)."""
    host = ["--host", "127.0.0.1"] if host_flag else []
    return Served(log_dir, model_path, *host, "--threads", "1", "--ctx", str(CTX), "--log-level", "warning",
                  *args, env=env)


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    assert err["code"] == code, err
    return err


# -- binding ---------------------------------------------------------------------------------------
def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on port (Linux /proc/net/tcp{,6})."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":   # 0A: LISTEN
                out.add(addr)
    return out


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_binds_loopback_unless_host_given(model_path, tmp_path):
    assert _parser().parse_args([]).host == "127.0.0.1"
    s = _served(model_path, tmp_path, host_flag=False)
    try:
        # 127.0.0.1 in /proc/net/tcp's little-endian hex; never 00000000 (every interface).
        assert _listening_addresses(s.port) == {"0100007F"}
    finally:
        s.close()


# -- the API key -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(model_path, tmp_path_factory):
    """A server whose key comes from the environment variable."""
    s = _served(model_path, tmp_path_factory.mktemp("keyed"), env={"TERNARY_API_KEY": KEY})
    yield s
    s.close()


def test_api_key_flag_beats_environment(monkeypatch):
    monkeypatch.setenv("TERNARY_API_KEY", "from-env")
    assert _parser().parse_args([]).api_key == "from-env"
    assert _parser().parse_args(["--api-key", "from-flag"]).api_key == "from-flag"
    monkeypatch.setenv("TERNARY_API_KEY", "")
    assert _parser().parse_args([]).api_key is None


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": "Bearer"}, {"Authorization": f"Bearer {KEY}x"}])
@pytest.mark.parametrize("method,path", [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                         ("GET", "/v1/models"), ("GET", f"/v1/models/{MODEL_ID}"),
                                         ("GET", "/metrics"), ("GET", "/docs")])
def test_without_the_key_401(keyed, headers, method, path):
    body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    r = httpx.request(method, keyed.base + path, headers=headers, json=body if method == "POST" else None,
                      timeout=30)
    err = _error(r, 401, "invalid_api_key")
    assert err["type"] == "invalid_request_error" and r.headers["www-authenticate"] == "Bearer"
    assert KEY not in r.text


def test_with_the_key_everything_works(keyed, eng):
    client = openai.OpenAI(base_url=keyed.base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    r = client.completions.create(model=MODEL_ID, prompt="Once upon a time", max_tokens=12, temperature=0)
    # the server's sampling defaults are OpenAI's (no penalties), not the CLI's
    assert r.choices[0].text == eng.generate("Once upon a time", max_new_tokens=12, temperature=0,
                                             repetition_penalty=1.0, frequency_penalty=0.0)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=5, temperature=0, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    r = httpx.get(keyed.base + "/metrics", headers={"authorization": f"bearer {KEY}"}, timeout=10)
    assert r.status_code == 200 and "ternary_requests_total" in r.text
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=keyed.base + "/v1", api_key="nope", max_retries=0).models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/static/../v1/models", "/static/%2e%2e/v1/models", "/static/..%2fv1/models",
                                  "//v1/models", "/v1/models/", "/V1/models"])
def test_no_path_trick_reaches_a_guarded_route(keyed, path):
    """The exempt prefix /static/ cannot be walked out of (raw request line, no client-side
    normalisation): never 200 without the key."""
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status in (401, 404), reply[:300]
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert MODEL_ID.encode() not in body and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_health_and_chat_page_need_no_key(keyed):
    """As llama.cpp's server: /health and the web UI stay open; the page asks for the key."""
    assert keyed.health()["status"] == "ok"
    page = httpx.get(keyed.base + "/", timeout=10)
    assert page.status_code == 200 and 'id="api-key"' in page.text
    for f in ("chat.js", "chat.css"):
        assert httpx.get(f"{keyed.base}/static/{f}", timeout=10).status_code == 200


# -- limits ----------------------------------------------------------------------------------------
MAX_BODY, MAX_PROMPT, MAX_TOKENS, MAX_IN_FLIGHT = 4096, 40, 20, 2


@pytest.fixture(scope="module")
def limited(model_path, tmp_path_factory):
    s = _served(model_path, tmp_path_factory.mktemp("limited"), "--max-body-bytes", str(MAX_BODY),
               "--max-prompt-tokens", str(MAX_PROMPT), "--max-tokens", str(MAX_TOKENS),
               "--max-concurrency", str(MAX_IN_FLIGHT), "--max-batch", "1", "--queue", "8")
    yield s
    s.close()


def _post(base, body, path="/v1/completions", **kw):
    return httpx.post(base + path, json={"model": MODEL_ID, **body}, timeout=30, **kw)


def test_body_too_large_413(limited):
    big = {"prompt": "x" * MAX_BODY}
    _error(_post(limited.base, big), 413, "request_too_large")
    # chunked, no Content-Length: refused once the bytes read pass the limit
    data = json.dumps({"model": MODEL_ID, **big}).encode()
    r = httpx.post(limited.base + "/v1/completions", content=iter([data[:1000], data[1000:]]), timeout=30)
    assert "content-length" not in r.request.headers
    _error(r, 413, "request_too_large")
    assert _post(limited.base, {"prompt": "x" * (MAX_BODY // 2), "max_tokens": 1}).status_code in (200, 400)


def test_prompt_tokens_limit_400(limited, eng):
    ids = list(range(3, 3 + MAX_PROMPT))
    r = _post(limited.base, {"prompt": ids, "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == MAX_PROMPT
    err = _error(_post(limited.base, {"prompt": ids + [3], "max_tokens": 1}), 400, "context_length_exceeded")
    assert err["param"] == "prompt" and str(MAX_PROMPT) in err["message"]
    msgs = [{"role": "user", "content": " ".join(["word"] * MAX_PROMPT)}]
    assert len(eng.chat_ids(msgs)) > MAX_PROMPT
    err = _error(_post(limited.base, {"messages": msgs}, "/v1/chat/completions"), 400, "context_length_exceeded")
    assert err["param"] == "messages"
    # beyond the context itself
    _error(_post(limited.base, {"prompt": [3] * 10, "max_tokens": CTX}), 400, "context_length_exceeded")


def test_max_tokens_cap(limited):
    """Asked for more than --max-tokens: 400 (as OpenAI answers a max_tokens beyond the model's
    limit); not asked (chat's default is the rest of the context): the cap."""
    for name in ("max_tokens", "max_completion_tokens"):
        err = _error(_post(limited.base, {"prompt": "x", name: MAX_TOKENS + 1}), 400, "invalid_value")
        assert err["param"] == name and str(MAX_TOKENS) in err["message"]
    r = _post(limited.base, {"prompt": "x", "max_tokens": MAX_TOKENS, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == MAX_TOKENS
    r = _post(limited.base, {"messages": [{"role": "user", "content": "x"}], "ignore_eos": True},
              "/v1/chat/completions")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == MAX_TOKENS


def _open_partial_request(port: int):
    """A POST whose body is still on its way (in flight until it arrives or the client
    leaves) -> (socket, the rest of the body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = json.dumps({"model": MODEL_ID, "prompt": "x", "max_tokens": 1}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
    return s, body[5:]


def test_concurrency_limit_429(limited):
    """Two slow uploads fill --max-concurrency 2: a third request gets 429 with Retry-After at
    once (while the batch has room); once they finish, requests are served again."""
    socks = [_open_partial_request(limited.port) for _ in range(MAX_IN_FLIGHT)]
    try:
        deadline = time.monotonic() + 10
        while limited.health()["in_flight"] < MAX_IN_FLIGHT:
            assert time.monotonic() < deadline, limited.health()
            time.sleep(0.05)
        h = limited.health()
        assert h["in_flight"] == h["max_in_flight"] == MAX_IN_FLIGHT and h["busy"] == h["waiting"] == 0
        r = _post(limited.base, {"prompt": "x", "max_tokens": 1})
        err = _error(r, 429, "rate_limit_exceeded")
        assert r.headers["retry-after"] == "1" and err["type"] == "requests"
        for s, rest in socks:
            s.sendall(rest)
        for s, _ in socks:
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200")
    finally:
        for s, _ in socks:
            s.close()
    deadline = time.monotonic() + 10
    while limited.health()["in_flight"]:
        assert time.monotonic() < deadline, limited.health()
        time.sleep(0.05)
    assert _post(limited.base, {"prompt": "x", "max_tokens": 1}).status_code == 200


def test_body_that_trickles_in_is_408(model_path, tmp_path):
    """A client that sends part of its body and stalls gets 408 after --body-timeout, and its
    place under --max-concurrency is free again."""
    s = _served(model_path, tmp_path, "--body-timeout", "1", "--max-concurrency", "1")
    try:
        sock, _ = _open_partial_request(s.port)
        with sock:
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                assert chunk, reply
                reply += chunk
        head, body = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body)["error"]["code"] == "request_timeout"
        deadline = time.monotonic() + 10
        while s.health()["in_flight"]:
            assert time.monotonic() < deadline, s.health()
            time.sleep(0.05)
        assert _post(s.base, {"prompt": "x", "max_tokens": 1}).status_code == 200
    finally:
        s.close()


@pytest.mark.parametrize("flag", ["--max-body-bytes", "--max-prompt-tokens", "--max-tokens", "--max-concurrency"])
def test_limit_flags_must_be_positive(flag):
    r = subprocess.run([sys.executable, "-m", "engine.serve", flag, "0"], capture_output=True, text=True,
                       env=server_env(), timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {flag} must be >= 1, got 0"


def test_default_limits():
    a = _parser().parse_args([])
    assert a.max_body_bytes == MAX_BODY_BYTES and a.max_prompt_tokens is None and a.max_tokens is None
    assert a.max_concurrency is None and a.shutdown_timeout == 30 and a.body_timeout == 30


# -- SIGTERM ---------------------------------------------------------------------------------------
def _sse_reader(port: int, body: dict):
    """A streamed completion over a raw socket: yields the data of each event."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(data) + data)
    buf = b""
    with s:
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, buf = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower()
        raw = b""
        while True:
            # de-chunk: size line, data, CRLF; a zero-size chunk ends the body
            while b"\r\n" not in buf:
                buf += _recv(s)
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(buf) < size + 2:
                buf += _recv(s)
            raw, buf = raw + buf[:size], buf[size + 2:]
            while b"\n\n" in raw:
                event, raw = raw.split(b"\n\n", 1)
                yield event.decode().removeprefix("data: ")
            if size == 0:
                return


def _recv(s) -> bytes:
    b = s.recv(65536)
    if not b:
        raise ConnectionError("the server closed the stream early")
    return b


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_streams_and_exits_0(model_path, tmp_path):
    """SIGTERM while a 6000-token stream runs (seconds of work): new connections are refused
    at once while the process lives on, the stream delivers every token and [DONE], and the
    process exits with status 0."""
    n = 6000
    s = _served(model_path, tmp_path)
    try:
        events = _sse_reader(s.port, {"model": MODEL_ID, "prompt": "Once", "max_tokens": n, "temperature": 0,
                                      "ignore_eos": True, "stream": True, "return_token_ids": True})
        first = json.loads(next(events))
        got = len(first["choices"][0]["token_ids"])
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not _refused(s.port):
            assert time.monotonic() < deadline, "still accepting connections 10 s after SIGTERM"
            time.sleep(0.02)
        assert s.proc.poll() is None, "exited before the stream was drained"
        finish = None
        rest = list(events)
        assert rest[-1] == "[DONE]"
        for e in rest[:-1]:
            c = json.loads(e)
            assert "error" not in c, c
            got += len(c["choices"][0]["token_ids"])
            finish = c["choices"][0]["finish_reason"] or finish
        assert got == n and finish == "length"
        assert s.proc.wait(30) == 0, s.output()
        assert _refused(s.port)
    finally:
        s.close()


def test_sigterm_while_idle_exits_0(model_path, tmp_path):
    s = _served(model_path, tmp_path)
    try:
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0, s.output()
    finally:
        s.close()


# -- no pickle -------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
# ternary_bench's worker protocol pickles over the pipes to its own child process: never a file.
PICKLE_OK = {"ternary_bench/bench.py"}


def test_no_pickle_reads_a_file_from_outside():
    """No pickle, marshal, shelve, dill or joblib loads; torch.load only with weights_only=True;
    numpy never with allow_pickle=True."""
    offenders = []
    for f in sorted(ROOT.glob("*/**/*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.split("/")[0] not in ("engine", "ternary_train", "ternary_bench", "benchmarks"):
            continue
        src = f.read_text()
        if rel not in PICKLE_OK and re.search(r"\b(import|from)\s+(c?pickle|marshal|shelve|dill|joblib)\b", src):
            offenders.append(f"{rel}: imports a pickle-like module")
        for call in re.findall(r"torch\.load\(([^)]*)\)", src):
            if "weights_only=True" not in call:
                offenders.append(f"{rel}: torch.load({call}) without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", src):
            offenders.append(f"{rel}: allow_pickle=True")
    assert not offenders, offenders
