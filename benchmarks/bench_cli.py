"""ternary-run against ternary-bench on the same model and thread count (issue 19).

    /path/to/quiet python benchmarks/bench_cli.py                  # embedded model, 1 and 2 threads
    python benchmarks/bench_cli.py --model m.tpk --threads 2 --rounds 5

In every round, for every thread count, the two alternate:
  - ternary-bench MODEL --formats <the model's> --lm-head <the model's> --pp '' --tg N --reps 1
    (its tgN: N Model.step calls, kernels and per-step Python of the model only);
  - ternary-run MODEL PROMPT -n N --seed S --threads T with the CLI's sampling defaults, as a
    user runs it (a fresh process, stdout a pipe): its summary line gives the load time and
    `generation N tok, X tok/s` (sampling, penalties, detokenizing and printing included).
Before anything is reported the text is checked: ternary-run's stdout must be exactly the prompt
plus Engine.generate(PROMPT, max_new_tokens=N, seed=S) (the same defaults, in this process) and a
newline, and the summary must say N tokens were generated. Figures: medians over rounds; ratio
= bench tok/s / ternary-run tok/s, of the medians and of the best rounds (the issue's target: <= 1.3; ternary-run >= 1000 tok/s; load
<= 100 ms).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import engine
except ImportError:  # run from a source checkout built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import engine
from engine.formats import tpk  # noqa: E402

PROMPT = "The harbour was quiet that night, and the fishermen"
SUMMARY = re.compile(r"load (\d+) ms \| prompt (\d+) tok, [\d.]+ tok/s \| generation (\d+) tok, ([\d.]+) tok/s")


class BenchError(RuntimeError):
    pass


def run_cli(model: str, n: int, seed: int, threads: int, expected: str) -> dict:
    cmd = [sys.executable, "-m", "engine.cli", model, PROMPT, "-n", str(n), "--seed", str(seed),
           "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise BenchError(f"ternary-run failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    if r.stdout != PROMPT + expected + "\n":
        raise BenchError(f"ternary-run's text differs from Engine.generate's:\n{r.stdout!r}\n{expected!r}")
    m = SUMMARY.search(r.stderr)
    if not m:
        raise BenchError(f"no summary line in ternary-run's stderr: {r.stderr.strip()[-300:]}")
    if int(m.group(3)) != n:
        raise BenchError(f"ternary-run generated {m.group(3)} tokens, not {n} (an end-of-sequence? "
                         f"try another --seed)")
    return dict(load_ms=float(m.group(1)), tps=float(m.group(4)))


def run_bench(model: str, fmt: str, head: str, n: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rows.json")
        cmd = [sys.executable, "-m", "ternary_bench.bench", model, "--formats", fmt, "--lm-head", head,
               "--threads", str(threads), "--pp", "", "--tg", str(n), "--reps", "1", "--json", out, "-q"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=200)
        if r.returncode != 0:
            raise BenchError(f"ternary-bench failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
        with open(out) as f:
            data = json.load(f)
    rows = [row for row in (data["rows"] if isinstance(data, dict) else data)
            if row.get("engine") == "ours" and row["threads"] == threads]
    if len(rows) != 1 or not rows[0].get("validated") or not rows[0].get(f"tg{n}_tps"):
        raise BenchError(f"ternary-bench gave no validated tg{n} row for {threads} threads")
    return float(rows[0][f"tg{n}_tps"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help=".tpk (default: the embedded model)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("-n", type=int, default=128, help="new tokens / decode steps (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--seed", type=int, default=1, help="ternary-run's sampling seed")
    args = ap.parse_args(argv)
    model = args.model or str(engine.DEFAULT_MODEL)
    cfg = tpk.read(model).config
    threads_list = [int(t) for t in args.threads.split(",")]
    eng = engine.Engine(model, threads=1)
    expected = eng.generate(PROMPT, max_new_tokens=args.n, seed=args.seed)
    if eng.stats.generated_tokens != args.n:
        print(f"error: the model stops after {eng.stats.generated_tokens} tokens with seed {args.seed}; "
              f"pick another --seed", file=sys.stderr)
        return 2
    res = {t: dict(cli=[], load=[], bench=[]) for t in threads_list}
    try:
        for _ in range(args.rounds):
            for t in threads_list:
                res[t]["bench"].append(run_bench(model, cfg["weight_format"], cfg["lm_head_format"], args.n, t))
                c = run_cli(model, args.n, args.seed, t, expected)
                res[t]["cli"].append(c["tps"])
                res[t]["load"].append(c["load_ms"])
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model {os.path.basename(model)} ({cfg['weight_format']}, lm_head {cfg['lm_head_format']}), "
          f"-n {args.n}, {args.rounds} rounds, text checked against Engine.generate")
    print("| threads | ternary-bench tg tok/s | ternary-run generation tok/s | ratio | best / best | load ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for t in threads_list:
        b, c, ld = (statistics.median(res[t][k]) for k in ("bench", "cli", "load"))
        best = max(res[t]["bench"]) / max(res[t]["cli"])
        print(f"| {t} | {b:.0f} | {c:.0f} | {b / c:.2f}x | {best:.2f}x | {ld:.0f} |")
        print(f"  samples: bench {[round(x) for x in res[t]['bench']]}, run {[round(x) for x in res[t]['cli']]}, "
              f"load {[round(x) for x in res[t]['load']]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
