"""ternary-serve under 1, 4 and 8 concurrent streaming clients: aggregate tokens/s, with every
request's greedy tokens checked against the same prompt run alone.

    python benchmarks/bench_server.py                       # bitnet-2b synthetic T2 model
    python benchmarks/bench_server.py --shape tiny --tokens 64 --json out.json
    python benchmarks/bench_server.py --model model.tpk --clients 1,2,4,8

Starts `ternary-serve` as a subprocess on 127.0.0.1 (max-batch = the most clients), warms it
up (the weights are mmapped: the first pass reads them in), then:
  1. validate: every prompt alone, one after another -> its reference tokens, and the
     single-client rate (tokens / wall time, prompt processing included);
  2. time: for each client count c, c streaming clients start together on prompts 0..c-1;
     aggregate tokens/s = all tokens / wall time from the start to the last [DONE]. Each
     client's tokens must equal its prompt's reference (greedy), else the run fails.
Clients use the `openai` package with stream=True and the server's extensions ignore_eos
(every request makes exactly --tokens tokens) and return_token_ids (the synthetic model's
tokenizer cannot spell most of its ids, so text would hide mismatches).
"""
import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
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


def start_server(model, port, args, max_batch):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(engine.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "engine.serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(max_batch), "--queue", str(max_batch), "--ctx", str(args.ctx),
           "--log-level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, env=env)
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


def run_one(client, model_id, prompt, n_tokens, start=None):
    """Stream one greedy completion -> (token ids, seconds to first token, seconds in all)."""
    if start is not None:
        start.wait()
    t0 = time.perf_counter()
    ids, ttft = [], None
    stream = client.completions.create(model=model_id, prompt=prompt, max_tokens=n_tokens, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True, "return_token_ids": True})
    for chunk in stream:
        if chunk.choices:
            new = getattr(chunk.choices[0], "token_ids", None) or chunk.choices[0].model_extra.get("token_ids", [])
            if new and ttft is None:
                ttft = time.perf_counter() - t0
            ids += new
    return ids, ttft, time.perf_counter() - t0


def time_clients(client, model_id, prompts, refs, c: int, tokens: int) -> dict:
    """c clients at once, started together: one result row (identical: every client got the
    tokens its prompt gets alone)."""
    start = threading.Barrier(c + 1)
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
            "ttft_s": statistics.median(t for _, t, _ in results), "identical": same, "wall_s": wall}


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
    p.add_argument("--json", help="write the results here as JSON")
    return p.parse_args(argv)


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
