"""What the runtime kernel choice picks on this machine for a synthetic model, and what it costs.

    python benchmarks/kernel_choice.py [--shape bitnet-700m] [--format t2] [--lm-head q4]
                                       [--threads 1] [--isa avx2] [--fresh]

Opens the cached synthetic model (ternary_bench.synthetic) with TERNARY_KERNEL=auto, prints the
choice with the probe's microseconds per call of every layout at each bucket's M
(KernelPlan.details), the probe and repack seconds, the extra packed bytes and the process's
resident memory after load. --fresh reprobes (TERNARY_PROBE=fresh) instead of using the cache.
The tok/s of the automatic choice beside each fixed layout are ternary-bench rows:
    ternary-bench --shape bitnet-700m --formats t2 --lm-head q4 --kernel auto,t2,t1,tl1,tl2 \\
        --threads 1 --pp 128 --tg 32
"""
import argparse
import os
import time


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


if __name__ == "__main__":
    main()
