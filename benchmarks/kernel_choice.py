"""What the runtime kernel choice picks on this machine for a synthetic model, and what it costs.

    python benchmarks/kernel_choice.py [--shape bitnet-700m] [--format t2] [--lm-head q4]
                                       [--threads 1] [--isa avx2] [--fresh]

Opens the cached synthetic model (ternary_bench.synthetic) with TERNARY_KERNEL=auto, prints the
choice with the probe's microseconds per call of every layout at each bucket's M
(KernelPlan.details), the probe and repack seconds, the extra packed bytes and the process's
resident memory after load. --fresh reprobes (TERNARY_PROBE=fresh) instead of using the cache.

--compare 'auto;t2;t1;tl1;tl2;gemv=tl2,gemm=t2' (TERNARY_KERNEL values, ';'-separated): opens
the model once per choice in this process, checks that every choice gives the first one's logits
bit for bit (a 128-token prefill and 4 decode steps), then times pp128 (one 128-token prefill)
and tg32 (32 decode steps), choices alternating, --reps times, and prints medians of tok/s by
wall clock and by this thread's CPU time. At 1 thread the kernels run on the calling thread, so
the CPU-time figure leaves out the time a shared machine deschedules the process (it still
includes memory stalls); ratios are to the first fixed layout of the list. The same
comparison as ternary-bench rows (wall clock, one worker process per choice):
    ternary-bench --shape bitnet-700m --formats t2 --lm-head q4 --kernel auto,t2,t1,tl1,tl2 \\
        --threads 1 --pp 128 --tg 32
"""
import argparse
import os
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="bitnet-700m")
    p.add_argument("--format", default="t2")
    p.add_argument("--lm-head", default="q4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--isa", default=None)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--compare", default=None)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    from engine import kernels as K
    from engine.runtime import kernel_choice
    from engine.runtime.model import Model
    from ternary_bench import synthetic
    if a.isa:
        K.set_isa(a.isa)
    K.set_threads(a.threads)
    path = synthetic.ensure(a.shape, a.format, a.lm_head)
    settings = kernel_choice.Settings(probe="fresh" if a.fresh else "on",
                                      cache_path=os.environ.get("TERNARY_PROBE_CACHE"))
    t0 = time.perf_counter()
    model = Model(path, kernels=settings)
    print(f"{a.shape} {a.format}/{a.lm_head}, ISA {K.active_isa()}, {a.threads} thread(s): "
          f"load {time.perf_counter() - t0:.1f} s, RSS after load {rss_mb():.0f} MB")
    print("\n".join(model.kernel_plan.details()))
    if a.compare:
        del model
        compare(path, [x.strip() for x in a.compare.split(";") if x.strip()], settings, a.reps)


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w0, time.thread_time() - c0


def compare(path, choices, base, reps) -> None:
    from dataclasses import replace
    from engine.runtime import kernel_choice
    from engine.runtime.model import Model
    models = {c: Model(path, ctx=256, kernels=replace(base, forced=kernel_choice.parse_forced(c)))
              for c in choices}
    ids = np.random.default_rng(0).integers(3, 1000, size=160)
    ref = None
    for c, m in models.items():  # bit-identical logits whatever runs each bucket
        got = [m.forward(ids[:128], 0)] + [m.step(int(ids[128 + i]), 128 + i).copy() for i in range(4)]
        if ref is None:
            ref = got
        elif not all(np.array_equal(x, y) for x, y in zip(ref, got)):
            raise SystemExit(f"{c}: logits differ from {choices[0]}")
    res = {c: {"pp128": [], "tg32": []} for c in choices}
    for r in range(reps):
        for c in choices[r % len(choices):] + choices[:r % len(choices)]:
            m = models[c]
            m.forward(ids[:2], 0, last_only=True)
            res[c]["pp128"].append(timed(lambda: m.forward(ids[:128], 0, last_only=True)))
            res[c]["tg32"].append(timed(lambda: [m.step(int(t), i) for i, t in enumerate(ids[:32])]))
    first_fixed = next((c for c in choices if c != "auto"), choices[0])
    tps = {c: {k: [np.median([n / w for w, _ in v]), np.median([n / cpu for _, cpu in v])]
               for k, v, n in ((k, v, 128 if k == "pp128" else 32) for k, v in res[c].items())}
           for c in choices}
    print(f"| choice | kernels gemv/few/gemm | linear weights MB | pp128 tok/s wall / cpu | "
          f"tg32 tok/s wall / cpu | pp128 x {first_fixed} (cpu) | tg32 x {first_fixed} (cpu) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c, m in models.items():
        plan = m.kernel_plan
        mb = sum(w.nbytes for L in m.layers for lin in (L.q, L.k, L.v, L.o, L.gate, L.up, L.down)
                 for w in lin.packed.values()) / 1e6
        kern = "/".join(x.split(" ", 1)[1] for x in plan.per_bucket().split(", "))
        t, b = tps[c], tps[first_fixed]
        print(f"| {c} | {kern} | {mb:.0f} | {t['pp128'][0]:.1f} / {t['pp128'][1]:.1f} | "
              f"{t['tg32'][0]:.2f} / {t['tg32'][1]:.2f} | {t['pp128'][1] / b['pp128'][1]:.2f}x | "
              f"{t['tg32'][1] / b['tg32'][1]:.2f}x |")


if __name__ == "__main__":
    main()
