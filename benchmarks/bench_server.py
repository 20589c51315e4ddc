"""ternary-serve under 1, 4 and 8 concurrent streaming clients: aggregate tokens/s, with every
request's greedy tokens checked against the same prompt run alone.

    python benchmarks/bench_server.py                       # bitnet-2b synthetic T2 model
    python benchmarks/bench_server.py --shape tiny --tokens 64 --json out.json
    python benchmarks/bench_server.py --model model.tpk --clients 1,2,4,8
    python benchmarks/bench_server.py --replicas 1,2 --threads 1 --clients 2,4 --rounds 2

Starts `ternary-serve` as a subprocess on 127.0.0.1 (max-batch = the most clients), warms it
up (the weights are mmapped: the first pass reads them in), then:
  1. validate: every prompt alone, one after another -> its reference tokens, and the
     single-client rate (tokens / wall time, prompt processing included);
  2. time: for each client count c, c streaming clients start together on prompts 0..c-1;
     aggregate tokens/s = all tokens / wall time from the start to the last [DONE]. Each
     client's tokens must equal its prompt's reference (greedy), else the run fails.
With --replicas 1,2 the same clients run against `ternary-serve --replicas R` (Ray Serve, a
local Ray cluster per variant, --threads per replica, default 1) for each R in turn, the order
alternating over --rounds; the table gives each R's aggregate tok/s against the fewest replicas
at the same client count, every stream checked against the prompt's tokens alone.
Clients use the `openai` package with stream=True and the server's extensions ignore_eos
(every request makes exactly --tokens tokens) and return_token_ids (the synthetic model's
tokenizer cannot spell most of its ids, so text would hide mismatches).
"""
import argparse
import collections
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:
    import engine
except ImportError:  # run from a source checkout built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import engine
from ternary_bench import synthetic  # noqa: E402
from engine.formats import tpk  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_cmd(model, port, args, max_batch):
    return [sys.executable, "-m", "engine.serve", model, "--host", "127.0.0.1", "--port", str(port),
            "--max-batch", str(max_batch), "--queue", str(max_batch), "--ctx", str(args.ctx),
            "--log-level", "warning"]


def _env(**extra):
    return dict(os.environ, **extra, PYTHONPATH=os.pathsep.join(
        [str(Path(engine.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))


def start_server(model, port, args, max_batch):
    cmd = _server_cmd(model, port, args, max_batch)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, env=_env())
    import httpx

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with status {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("error: the server did not start within 600 s")
        time.sleep(0.5)


def start_cluster(model, port, args, max_batch, replicas):
    """`ternary-serve --replicas R --threads T`: a local Ray cluster in a temp dir of its own,
    ready once the CLI prints that every replica runs -> (proc, base url, temp dir)."""
    tmp = tempfile.mkdtemp(prefix="tray-")   # short: Ray's socket paths must fit 107 bytes
    log = open(os.path.join(tmp, "serve.log"), "w+")
    cmd = _server_cmd(model, port, args, max_batch) + ["--replicas", str(replicas), "--threads",
                                                        str(args.threads or 1)]
    if args.stream_interval is not None:
        cmd += ["--stream-interval", str(args.stream_interval)]
    proc = subprocess.Popen(cmd, env=_env(RAY_TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0"), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while True:
        log.seek(0)
        text = log.read()
        if "replicas ready on" in text:
            return proc, f"http://127.0.0.1:{port}", tmp
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"error: ternary-serve --replicas {replicas} did not start:\n{text[-3000:]}")
        time.sleep(0.5)


def stop(proc, tmp=None):
    proc.send_signal(signal.SIGTERM)   # the CLI takes its Ray cluster down on SIGTERM
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


REPLICAS_SEEN: list = []   # X-Ternary-Replica of each stream, in order


def run_one(client, model_id, prompt, n_tokens, start=None):
    """Stream one greedy completion -> (token ids, seconds to first token, seconds in all)."""
    if start is not None:
        start.wait()
    t0 = time.perf_counter()
    ids, ttft = [], None
    with client.completions.with_streaming_response.create(
            model=model_id, prompt=prompt, max_tokens=n_tokens, temperature=0, stream=True,
            extra_body={"ignore_eos": True, "return_token_ids": True}) as response:
        replica = response.headers.get("x-ternary-replica")   # set by --replicas servers only
        for chunk in response.parse():
            if chunk.choices:
                new = getattr(chunk.choices[0], "token_ids", None) or chunk.choices[0].model_extra.get("token_ids", [])
                if new and ttft is None:
                    ttft = time.perf_counter() - t0
                ids += new
    if replica is not None:
        REPLICAS_SEEN.append(replica)
    return ids, ttft, time.perf_counter() - t0


def time_clients(client, model_id, prompts, refs, c: int, tokens: int) -> dict:
    """c clients at once, started together: one result row (identical: every client got the
    tokens its prompt gets alone)."""
    start = threading.Barrier(c + 1)
    REPLICAS_SEEN.clear()
    with concurrent.futures.ThreadPoolExecutor(c) as pool:
        futures = [pool.submit(run_one, client, model_id, prompts[i], tokens, start) for i in range(c)]
        start.wait()
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    same = all(ids == refs[i] for i, (ids, _, _) in enumerate(results))
    total = sum(len(ids) for ids, _, _ in results)
    return {"clients": c, "aggregate_tps": total / wall,
            "per_client_tps": statistics.mean(len(i) / s for i, _, s in results),
            "ttft_s": statistics.median(t for _, t, _ in results), "identical": same, "wall_s": wall,
            "replicas_used": len(set(REPLICAS_SEEN)),
            # streams per replica, most first ([2, 2]: 4 clients spread evenly)
            "split": sorted(collections.Counter(REPLICAS_SEEN).values(), reverse=True)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a .tpk (default: the synthetic --shape/--fmt model)")
    p.add_argument("--shape", default="bitnet-2b", choices=list(synthetic.SHAPES))
    p.add_argument("--fmt", default="t2", choices=["t2", "t1"])
    p.add_argument("--clients", default="1,4,8", help="client counts, comma-separated (default 1,4,8)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per request (default 32)")
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default 16)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: physical cores)")
    p.add_argument("--ctx", type=int, default=256, help="server context per slot (default 256)")
    p.add_argument("--replicas", default=None, metavar="R,R",
                   help="compare Ray Serve replica counts instead (e.g. 1,2): `ternary-serve --replicas R "
                        "--threads T` (T = --threads, default 1) on a local Ray cluster per variant")
    p.add_argument("--rounds", type=int, default=1, help="with --replicas: rounds, the order of the "
                                                         "variants alternating (default 1)")
    p.add_argument("--control", action="store_true",
                   help="with --replicas: also time R plain processes (no server) decoding at once")
    p.add_argument("--stream-interval", type=float, default=None, metavar="S",
                   help="with --replicas: the servers' --stream-interval (default: theirs)")
    p.add_argument("--json", help="write the results here as JSON")
    return p.parse_args(argv)


def run_replicas(args, model, prompts, counts):
    """Each replica count in turn (order reversed every other round), each its own Ray cluster:
    c streaming clients at once for every c in counts -> (rows, every stream identical). The
    reference tokens are every prompt alone on the first variant."""
    import openai

    reps = sorted({int(r) for r in args.replicas.split(",")})
    refs, rows, ok = None, [], True
    for rnd in range(args.rounds):
        for r in reps if rnd % 2 == 0 else reps[::-1]:
            if args.control:
                rows.append({"control_processes": r, "round": rnd,
                             "aggregate_tps": control_processes(args, model, prompts, r)})
                print(f"round {rnd} control: {r} plain processes: {rows[-1]['aggregate_tps']:.2f} tok/s", flush=True)
            proc, base, tmp = start_cluster(model, free_port(), args, max(counts), r)
            try:
                client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=3600)
                model_id = client.models.list().data[0].id
                with concurrent.futures.ThreadPoolExecutor(max(counts)) as pool:   # touch every replica
                    list(pool.map(lambda pr: run_one(client, model_id, pr, 2), prompts))
                if refs is None:
                    refs = [run_one(client, model_id, pr, args.tokens)[0] for pr in prompts]
                    if any(len(x) != args.tokens for x in refs):
                        raise SystemExit(f"error: expected {args.tokens} tokens per request")
                for c in counts:
                    row = time_clients(client, model_id, prompts, refs, c, args.tokens)
                    rows.append({"replicas": r, "round": rnd, **row})
                    ok &= row["identical"]
                    print(f"round {rnd} replicas {r} clients {c}: {row['aggregate_tps']:.2f} tok/s, "
                          f"streams per replica {row['split']}, identical {row['identical']}",
                          flush=True)
            finally:
                stop(proc, tmp)
    return rows, ok


CONTROL = """
import sys, time
from engine import Engine
eng = Engine(sys.argv[1], threads=int(sys.argv[2]))
prompt, n = [int(t) for t in sys.argv[4].split(",")], int(sys.argv[3])
eng.generate(prompt, max_new_tokens=2, temperature=0)   # page the weights in
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
out = eng.generate(prompt, max_new_tokens=n, temperature=0, ignore_eos=True,
                   repetition_penalty=1.0, frequency_penalty=0.0)   # as the server samples
print(len(out), time.perf_counter() - t0, flush=True)
"""


def control_processes(args, model, prompts, n: int) -> float:
    """No server, no Ray: n plain processes decode at once (Engine.generate, --threads each),
    started together -> aggregate tok/s. What the machine gives n independent engines."""
    cmd = [sys.executable, "-c", CONTROL, model, str(args.threads or 1), str(args.tokens)]
    procs = [subprocess.Popen(cmd + [",".join(map(str, prompts[i % len(prompts)]))], env=_env(), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("error: a control process failed")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        done = [p.stdout.readline().split() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return sum(int(k) for k, _ in done) / max(float(s) for _, s in done)


def report_replicas(args, model, rows, ok) -> int:
    """Median aggregate tok/s over rounds per (replicas, clients), and its ratio to the fewest
    replicas at the same client count."""
    med = {}
    for key in sorted({(r["replicas"], r["clients"]) for r in rows if "replicas" in r}):
        med[key] = statistics.median(r["aggregate_tps"] for r in rows if (r.get("replicas"), r.get("clients")) == key)
    control = {n: statistics.median(r["aggregate_tps"] for r in rows if r.get("control_processes") == n)
               for n in sorted({r["control_processes"] for r in rows if "control_processes" in r})}
    base_r = min(r for r, _ in med)
    print(f"\n{os.path.basename(model)}: {args.prompt_tokens}-token prompts, {args.tokens} new tokens each, "
          f"{args.threads or 1} thread(s) per replica, greedy, {args.rounds} round(s), median")
    print(f"{'replicas':>8} {'clients':>7} {'aggregate tok/s':>16} {f'vs {base_r} replica(s)':>18}")
    for (r, c), tps in med.items():
        print(f"{r:>8} {c:>7} {tps:>16.2f} {tps / med[(base_r, c)]:>17.2f}x")
    for n, tps in control.items():
        print(f"control: {n} plain processes (no server) decoding at once: {tps:.2f} tok/s "
              f"({tps / control[min(control)]:.2f}x {min(control)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": os.path.basename(model), "tokens": args.tokens, "prompt_tokens": args.prompt_tokens,
                       "threads_per_replica": args.threads or 1, "rows": rows}, f, indent=1)
    if not ok:
        print("error: a stream's tokens differ from the same prompt run alone", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    counts = sorted({int(c) for c in args.clients.split(",")})
    if counts[0] < 1 or args.tokens < 1 or args.prompt_tokens < 1:
        raise SystemExit("error: clients, --tokens and --prompt-tokens must be >= 1")

    import numpy as np
    import openai

    model = args.model or synthetic.ensure(args.shape, args.fmt)
    vocab = tpk.read(model).config["vocab_size"]
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, vocab, args.prompt_tokens).tolist() for _ in range(max(counts))]
    if args.replicas:   # SIGTERM (a time limit) still runs the finally that stops the Ray cluster
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return report_replicas(args, model, *run_replicas(args, model, prompts, counts))
    proc, base = start_server(model, free_port(), args, max(counts))
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=3600)
        model_id = client.models.list().data[0].id
        run_one(client, model_id, prompts[0], 2)   # warm-up: page the weights in

        # 1. validate: every prompt alone (these runs are also the 1-client rate)
        refs, alone = [], []
        for pr in prompts:
            ids, ttft, secs = run_one(client, model_id, pr, args.tokens)
            if len(ids) != args.tokens:
                raise SystemExit(f"error: expected {args.tokens} tokens, got {len(ids)}")
            refs.append(ids)
            alone.append((ttft, secs))
        one_tps = len(prompts) * args.tokens / sum(s for _, s in alone)
        rows = [{"clients": 1, "aggregate_tps": one_tps, "per_client_tps": one_tps,
                 "ttft_s": statistics.median(t for t, _ in alone), "identical": True,
                 "wall_s": sum(s for _, s in alone) / len(alone)}]

        # 2. time: c clients at once
        ok = True
        for c in counts:
            if c == 1:
                continue
            row = time_clients(client, model_id, prompts, refs, c, args.tokens)
            ok &= row["identical"]
            rows.append(row)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    name = os.path.basename(model)
    print(f"\n{name}: {args.prompt_tokens}-token prompts, {args.tokens} new tokens each, "
          f"threads {args.threads or 'default'}, greedy")
    print(f"{'clients':>7} {'aggregate tok/s':>16} {'per client':>11} {'speedup':>8} {'TTFT p50':>9} {'identical':>10}")
    for r in rows:
        print(f"{r['clients']:>7} {r['aggregate_tps']:>16.2f} {r['per_client_tps']:>11.2f} "
              f"{r['aggregate_tps'] / one_tps:>7.2f}x {r['ttft_s']:>8.2f}s {str(r['identical']):>10}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "tokens": args.tokens, "prompt_tokens": args.prompt_tokens,
                       "threads": args.threads, "rows": rows}, f, indent=1)
    if not ok:
        print("error: a batched request's tokens differ from the same prompt run alone", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
