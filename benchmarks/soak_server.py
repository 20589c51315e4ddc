"""ternary-serve under load and faults: many concurrent clients mixing good and bad requests,
then checks that nothing was lost, wrong, leaked or left running.

    python benchmarks/soak_server.py                        # embedded default model
    python benchmarks/soak_server.py --requests 2000 --clients 96 --json soak.json
    python benchmarks/soak_server.py --model model.tpk --ctx 1024

Starts `ternary-serve` as a subprocess on 127.0.0.1 with an API key, then:
  1. reference: every well-formed request template once, one after another (non-streamed,
     greedy or with a fixed seed) -> its text, finish_reason and completion tokens;
  2. soak: --clients asyncio clients (httpx) share --requests requests, each drawn at random
     (fixed seed) from: good completions and chats, streamed or not (answer must equal the
     reference exactly), slow readers of streams and slow uploads (same check), streams
     dropped after a few events, non-streamed requests abandoned by a client timeout,
     malformed JSON, values of the wrong type, huge max_tokens, prompts beyond the context,
     unknown models, missing or wrong API keys, bodies over --max-body-bytes. Every refusal
     must be an OpenAI-style
     {"error": {"message", "type", "param", "code"}} with the right status and code.
     First --warmup requests (checked the same way) bring the server to its working set
     (KV pages, connection buffers, allocator pools); during the --requests that follow the
     server's RSS (/proc/PID/status VmRSS) is sampled every 0.2 s;
  3. after: no slot busy, nothing queued or in flight within 5 s; a final request is served
     at once and correctly; median RSS of the soak's last quarter within 5 % of its first;
  4. drain: 8 streams open, SIGTERM: new connections are refused, every stream still ends
     with the reference text and [DONE], and the server exits with status 0.
Prints a summary (and --json); exits 1 on any violation. Linux only (reads /proc).
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

try:
    import engine
except ImportError:  # run from a source checkout built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import engine

KEY = "soak-key"
PROMPTS = ["Once upon a time", "The little dog", "Tom and Sue went to the park", "One day, a girl named Lily",
           "The sun was hot and", "Ben had a red ball.", "Mom said,", "There was a big tree",
           "The cat sat on the mat and", "It was a cold winter day.", "A bird flew", "The boy was sad because"]
# kind -> weight; the good kinds make up about 60 %.
KINDS = {"good": 30, "good_stream": 20, "slow_reader": 6, "slow_upload": 3, "drop_stream": 8, "abandon": 3,
         "malformed": 5, "wrong_type": 5, "huge_max_tokens": 4, "beyond_ctx": 4, "unknown_model": 4, "no_key": 3,
         "wrong_key": 2, "too_large": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_server(args, port):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(engine.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "engine.serve", *([args.model] if args.model else []), "--port", str(port),
           "--api-key", KEY, "--max-batch", str(args.max_batch), "--queue", "512", "--max-concurrency", "512",
           "--max-body-bytes", str(args.max_body_bytes), "--threads", str(args.threads),
           "--log-level", "warning"] + (["--ctx", str(args.ctx)] if args.ctx else [])
    proc = subprocess.Popen(cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with status {proc.returncode}")
        try:
            r = httpx.get(base + "/health", timeout=2)
            if r.status_code == 200:
                return proc, base, r.json()["ctx"]
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("error: the server did not start within 300 s")
        time.sleep(0.3)


def templates(n_short: int, n_long: int) -> list[dict]:
    """Well-formed requests: completions and chats, greedy or seeded sampling; the last n_long
    are longer (the drain phase streams them)."""
    out = []
    for i in range(n_short + n_long):
        p = PROMPTS[i % len(PROMPTS)]
        body = {"model": None, "max_tokens": 120 if i >= n_short else 8 + (i * 7) % 40}
        body.update({"temperature": 0} if i % 2 == 0 else {"temperature": 0.8, "top_p": 0.95, "seed": 1000 + i})
        if i % 3 == 1:
            body["messages"] = [{"role": "user", "content": p}]
        else:
            body["prompt"] = p
        out.append(body)
    return out


def path_of(body) -> str:
    return "/v1/chat/completions" if "messages" in body else "/v1/completions"


class Soak:
    def __init__(self, args, base, ctx, model_id):
        self.args, self.base, self.ctx, self.model_id = args, base, ctx, model_id
        self.auth = {"Authorization": f"Bearer {KEY}"}
        self.templates = templates(24, 8)
        for t in self.templates:
            t["model"] = model_id
        self.refs: list[dict] = []
        self.results = Counter()        # (kind, "ok" | "FAIL")
        self.violations: list[str] = []
        self.in_flight = self.peak = 0
        self.next = 0

    def fail(self, what: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(what)

    # -- answers -------------------------------------------------------------------------------
    @staticmethod
    def answer_of(body, r: dict) -> dict:
        c = r["choices"][0]
        text = c["message"]["content"] if "messages" in body else c["text"]
        return {"text": text, "finish": c["finish_reason"], "tokens": r["usage"]["completion_tokens"]}

    async def reference(self, client) -> None:
        for t in self.templates:
            r = await client.post(self.base + path_of(t), json=t, headers=self.auth)
            r.raise_for_status()
            self.refs.append(self.answer_of(t, r.json()))

    async def plain(self, client, i) -> str | None:
        t = self.templates[i]
        r = await client.post(self.base + path_of(t), json=t, headers=self.auth)
        if r.status_code != 200:
            return f"status {r.status_code}: {r.text[:200]}"
        got = self.answer_of(t, r.json())
        return None if got == self.refs[i] else f"template {i}: got {got}, want {self.refs[i]}"

    async def slow_upload(self, client, i) -> str | None:
        """Template i with its body sent in 4 pieces 20 ms apart (chunked, no Content-Length)."""
        t = self.templates[i]
        data = json.dumps(t).encode()

        async def pieces():
            for k in range(4):
                yield data[k * len(data) // 4:(k + 1) * len(data) // 4]
                await asyncio.sleep(0.02)
        r = await client.post(self.base + path_of(t), content=pieces(),
                              headers=dict(self.auth, **{"Content-Type": "application/json"}))
        if r.status_code != 200:
            return f"status {r.status_code}: {r.text[:200]}"
        got = self.answer_of(t, r.json())
        return None if got == self.refs[i] else f"template {i}: got {got}, want {self.refs[i]}"

    async def streamed(self, client, i, delay=0.0, stop_after=None) -> str | None:
        """Stream template i; delay: seconds slept per chunk read (a slow reader); stop_after:
        leave after that many events (the answer is then not checked)."""
        t = dict(self.templates[i], stream=True, stream_options={"include_usage": True})
        text, finish, tokens, events, buf = [], None, None, 0, b""
        async with client.stream("POST", self.base + path_of(t), json=t, headers=self.auth) as r:
            if r.status_code != 200:
                return f"status {r.status_code}"
            async for chunk in r.aiter_raw(256 if delay else 65536):
                buf += chunk
                if delay:
                    await asyncio.sleep(delay)
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    data = event.decode().removeprefix("data: ")
                    events += 1
                    if stop_after is not None and events >= stop_after:
                        return None   # leaving the block closes the connection mid-stream
                    if data == "[DONE]":
                        got = {"text": "".join(text), "finish": finish, "tokens": tokens}
                        return None if got == self.refs[i] else f"stream {i}: got {got}, want {self.refs[i]}"
                    c = json.loads(data)
                    if "error" in c:
                        return f"error event {c}"
                    if c.get("usage"):
                        tokens = c["usage"]["completion_tokens"]
                    for ch in c["choices"]:
                        text.append(ch["delta"].get("content") or "" if "messages" in t else ch["text"])
                        finish = ch["finish_reason"] or finish
        return None if stop_after is not None else "stream ended without [DONE]"

    # -- refusals ------------------------------------------------------------------------------
    def bad_request(self, kind, rng) -> tuple[dict, bytes, int, str | None]:
        """(headers, body, expected status, expected error code) of a refused request."""
        prompt = {"model": self.model_id, "prompt": rng.choice(PROMPTS), "max_tokens": 4}
        h = dict(self.auth, **{"Content-Type": "application/json"})
        if kind == "malformed":
            body = rng.choice([b'{"prompt": "x", ', b"{not json}", b'{"prompt": "x"}}', b"\xff\xfe",
                               b'{"prompt": "x", "temperature": NaN}', b"[" * 5000])
            return h, body, 400, None
        if kind == "wrong_type":
            field, value = rng.choice([("max_tokens", "ten"), ("temperature", "hot"), ("stream", "yes"),
                                       ("seed", 1.5), ("stop", [1, 2]), ("prompt", {"a": 1})])
            return h, json.dumps(dict(prompt, **{field: value})).encode(), 400, "invalid_type"
        if kind == "huge_max_tokens":
            return h, json.dumps(dict(prompt, max_tokens=rng.choice([10**9, 2**62, self.ctx]))).encode(), \
                400, "context_length_exceeded"
        if kind == "beyond_ctx":
            ids = [rng.randrange(10, 200) for _ in range(self.ctx + rng.randrange(0, 50))]
            body = dict(prompt, prompt=ids) if rng.random() < 0.5 else \
                {"model": self.model_id, "messages": [{"role": "user", "content": "word " * self.ctx}]}
            return h, json.dumps(body).encode(), 400, "context_length_exceeded"
        if kind == "unknown_model":
            return h, json.dumps(dict(prompt, model=rng.choice(["gpt-4o", "", "x" * 300]))).encode(), \
                404, "model_not_found"
        if kind in ("no_key", "wrong_key"):
            h = {"Content-Type": "application/json"}
            if kind == "wrong_key":
                h["Authorization"] = rng.choice([f"Bearer {KEY}x", "Bearer", f"Basic {KEY}", "Bearer soak"])
            return h, json.dumps(prompt).encode(), 401, "invalid_api_key"
        assert kind == "too_large"
        return h, json.dumps(dict(prompt, prompt="x" * self.args.max_body_bytes)).encode(), 413, \
            "request_too_large"

    async def refused(self, client, kind, rng) -> str | None:
        headers, body, status, code = self.bad_request(kind, rng)
        path = "/v1/chat/completions" if b'"messages"' in body else "/v1/completions"
        r = await client.post(self.base + path, content=body, headers=headers)
        if r.status_code != status:
            return f"{kind}: status {r.status_code}, want {status}: {r.text[:200]}"
        try:
            err = r.json()["error"]
        except (ValueError, KeyError, TypeError):
            return f"{kind}: not an OpenAI-style error body: {r.text[:200]}"
        if set(err) != {"message", "type", "param", "code"} or not err["message"] or not err["type"]:
            return f"{kind}: bad error shape {err}"
        if code is not None and err["code"] != code:
            return f"{kind}: code {err['code']}, want {code}"
        if status in (429, 503) and "retry-after" not in r.headers:
            return f"{kind}: {status} without Retry-After"
        return None

    async def abandon(self, client, i) -> str | None:
        """A non-streamed request whose client gives up before the answer."""
        t = dict(self.templates[i], ignore_eos=True, max_tokens=self.ctx // 2)
        try:
            await client.post(self.base + path_of(t), json=t, headers=self.auth,
                              timeout=httpx.Timeout(30, read=0.02))
        except httpx.ReadTimeout:
            pass
        return None

    # -- the soak ------------------------------------------------------------------------------
    async def one(self, client, kind, rng) -> str | None:
        n_short = len(self.templates) - 8
        if kind == "good":
            return await self.plain(client, rng.randrange(len(self.templates)))
        if kind == "good_stream":
            return await self.streamed(client, rng.randrange(len(self.templates)))
        if kind == "slow_upload":
            return await self.slow_upload(client, rng.randrange(len(self.templates)))
        if kind == "slow_reader":
            return await self.streamed(client, rng.randrange(n_short), delay=0.01)
        if kind == "drop_stream":
            return await self.streamed(client, rng.randrange(n_short, len(self.templates)),
                                       stop_after=rng.randrange(1, 6))
        if kind == "abandon":
            return await self.abandon(client, rng.randrange(len(self.templates)))
        return await self.refused(client, kind, rng)

    async def client_loop(self, client, cid: int, start: asyncio.Event, n: int) -> None:
        rng = random.Random(self.args.seed * 1000 + cid + (n << 16))
        kinds, weights = list(KINDS), list(KINDS.values())
        await start.wait()
        while self.next < n:
            self.next += 1
            kind = rng.choices(kinds, weights)[0]
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                why = await self.one(client, kind, rng)
            except Exception as e:  # noqa: BLE001  (a transport error is a violation too)
                why = f"{type(e).__name__}: {e}"
            finally:
                self.in_flight -= 1
            self.results[kind, "FAIL" if why else "ok"] += 1
            if why:
                self.fail(f"{kind}: {why}")

    async def sample_rss(self, pid: int, out: list, stop: asyncio.Event) -> None:
        while not stop.is_set():
            out.append((time.monotonic(), rss_bytes(pid)))
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except asyncio.TimeoutError:
                pass

    async def phase(self, client, n: int) -> float:
        """n requests shared by --clients clients -> seconds taken."""
        self.next, start = 0, asyncio.Event()
        tasks = [asyncio.create_task(self.client_loop(client, c, start, n)) for c in range(self.args.clients)]
        t0 = time.monotonic()
        start.set()
        await asyncio.gather(*tasks)
        return time.monotonic() - t0

    async def soak(self, client, pid: int) -> dict:
        warm_s = await self.phase(client, self.args.warmup)
        rss_warm = rss_bytes(pid)
        stop, rss = asyncio.Event(), []
        sampler = asyncio.create_task(self.sample_rss(pid, rss, stop))
        seconds = await self.phase(client, self.args.requests)
        stop.set()
        await sampler
        q = max(1, len(rss) // 4)
        first, last = statistics.median(r for _, r in rss[:q]), statistics.median(r for _, r in rss[-q:])
        growth = last / first - 1
        if growth > 0.05:
            self.fail(f"RSS grew {growth:+.1%} from the first quarter ({first / 2**20:.1f} MB) to the last "
                      f"({last / 2**20:.1f} MB)")
        quarters = [statistics.median(r for _, r in rss[k * q:(k + 1) * q]) / 2**20 for k in range(4)]
        return {"warmup_s": warm_s, "rss_after_warmup_mb": rss_warm / 2**20, "seconds": seconds,
                "rss_first_mb": first / 2**20, "rss_last_mb": last / 2**20,
                "rss_growth": growth, "rss_samples": len(rss), "rss_quarters_mb": quarters,
                "peak_client_concurrency": self.peak}

    # -- after ---------------------------------------------------------------------------------
    async def settled(self, client) -> dict:
        """No slot busy, nothing waiting or in flight (within 5 s), then one request served at once."""
        deadline = time.monotonic() + 5
        while True:
            h = (await client.get(self.base + "/health")).json()
            if not (h["busy"] or h["waiting"] or h["in_flight"]):
                break
            if time.monotonic() > deadline:
                self.fail(f"leaked: 5 s after the soak the server still holds {h}")
                break
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        why = await self.plain(client, 0)
        latency = time.monotonic() - t0
        if why:
            self.fail(f"final request: {why}")
        if latency > 5:
            self.fail(f"final request took {latency:.2f} s")
        return {"health_after": h, "final_request_s": latency}

    async def drain(self, client, proc) -> dict:
        """8 streams open, SIGTERM: each must still end with its reference text and [DONE]."""
        long = range(len(self.templates) - 8, len(self.templates))
        streams = [asyncio.create_task(self.streamed(client, i, delay=0.005)) for i in long]
        deadline = time.monotonic() + 30
        while (await client.get(self.base + "/health")).json()["in_flight"] < len(streams):
            if time.monotonic() > deadline:
                self.fail("drain: the 8 streams never were in flight together")
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        refused = None
        while time.monotonic() - t0 < 10:
            try:
                socket.create_connection(("127.0.0.1", int(self.base.rsplit(":", 1)[1])), timeout=2).close()
            except ConnectionRefusedError:
                refused = time.monotonic() - t0
                break
            await asyncio.sleep(0.02)
        alive_when_refused = proc.poll() is None
        if refused is None:
            self.fail("drain: new connections still accepted 10 s after SIGTERM")
        for i, s in zip(long, streams):
            why = await s
            self.results["drain_stream", "FAIL" if why else "ok"] += 1
            if why:
                self.fail(f"drain: stream {i}: {why}")
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            code = None
            self.fail("drain: the server did not exit within 60 s of SIGTERM")
        if code != 0:
            self.fail(f"drain: exit status {code}, want 0")
        return {"refused_after_s": refused, "alive_when_refused": alive_when_refused,
                "drain_seconds": time.monotonic() - t0, "exit_status": code}


async def run(args) -> dict:
    port = free_port()
    proc, base, ctx = start_server(args, port)
    try:
        limits = httpx.Limits(max_connections=args.clients + 16, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits) as client:
            models = (await client.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})).json()
            s = Soak(args, base, ctx, models["data"][0]["id"])
            t0 = time.monotonic()
            await s.reference(client)
            out = {"ctx": ctx, "templates": len(s.templates), "reference_s": time.monotonic() - t0}
            out.update(await s.soak(client, proc.pid))
            out.update(await s.settled(client))
            out.update(await s.drain(client, proc))
        out["results"] = {f"{k}/{v}": n for (k, v), n in sorted(s.results.items())}
        out["requests"] = sum(n for (k, _), n in s.results.items() if k != "drain_stream")
        out["violations"] = s.violations
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="the .tpk model (default: the embedded model)")
    p.add_argument("--requests", type=int, default=1200, help="requests measured (RSS sampled)")
    p.add_argument("--warmup", type=int, default=300, help="requests before those (checked, RSS not sampled)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ctx", type=int, default=None)
    p.add_argument("--max-body-bytes", type=int, default=1 << 16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the summary here too")
    args = p.parse_args()
    # Killed (a timeout): still stop the server subprocess (run's finally kills it).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(f"error: stopped by signal {signum}"))
    out = asyncio.run(run(args))
    print(f"soak: {out['requests']} requests ({args.warmup} warm-up + {args.requests}) from {args.clients} "
          f"clients (peak {out['peak_client_concurrency']} in flight) in {out['warmup_s']:.1f} + "
          f"{out['seconds']:.1f} s; reference run {out['reference_s']:.1f} s, ctx {out['ctx']}")
    kinds = sorted({k.split("/")[0] for k in out["results"]})
    for k in kinds:
        ok, bad = out["results"].get(f"{k}/ok", 0), out["results"].get(f"{k}/FAIL", 0)
        print(f"  {k:16s} {ok:5d} ok {bad:5d} failed")
    print(f"RSS: {out['rss_after_warmup_mb']:.1f} MB after the warm-up; {out['rss_first_mb']:.1f} MB (first "
          f"quarter median) -> {out['rss_last_mb']:.1f} MB (last), "
          f"{out['rss_growth']:+.2%} over {out['rss_samples']} samples; quarter medians "
          f"{', '.join(f'{x:.1f}' for x in out['rss_quarters_mb'])} MB")
    print(f"after: health {json.dumps(out['health_after'])}; final request {out['final_request_s'] * 1000:.0f} ms")
    print(f"SIGTERM: connections refused after {out['refused_after_s']} s (server alive then: "
          f"{out['alive_when_refused']}), drained in {out['drain_seconds']:.2f} s, exit status {out['exit_status']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if out["violations"]:
        print(f"{len(out['violations'])} VIOLATIONS:")
        for v in out["violations"]:
            print("  " + v)
        return 1
    print("no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
