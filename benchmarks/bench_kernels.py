"""Kernel benchmark: GEMV / GEMM of ternary (T2, T1, TL1), fp16 and int8 weights at BitNet-2B shapes,
next to this machine's DRAM read bandwidth measured in the same run.

    python benchmarks/bench_kernels.py [--json out.json] [--rounds 5] [--threads 1,2]

Every kernel is validated against numpy before it is timed. GEMV weights cycle over enough
distinct copies of the matrix (>= 4x the last-level cache) that they come from DRAM, as in a
real decode step. Compared variants alternate within each round (the machine is shared and
noisy); figures are medians over rounds. One JSON record per (kernel, format, isa, threads,
N, K, M) with seconds (per call), gbps (weight bytes streamed per second), dram_gbps (the
streaming-read bandwidth at the same thread count, sampled right before each of the kernel's
timing slices) and dram_fraction (median over rounds of the kernel's GB/s over the sample just
before it: the available bandwidth of this shared machine drifts by 30 % within minutes, so
only adjacent measurements make a fair ratio).
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

try:
    from engine import _kernels as K
except ImportError:  # run from a source checkout built in place
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from engine import _kernels as K

# BitNet b1.58 2B4T: hidden 2560, 20 query / 5 kv heads of 128, intermediate 6912, vocab 128256.
SHAPES = [  # (name, N, K, formats)
    ("attn.qo", 2560, 2560, ("t2", "t1", "tl1", "tl2", "f16")),
    ("attn.kv", 640, 2560, ("t2", "t1", "tl1", "tl2", "f16")),
    ("mlp.gate_up", 6912, 2560, ("t2", "t1", "tl1", "tl2", "f16")),
    ("mlp.down", 2560, 6912, ("t2", "t1", "tl1", "tl2", "f16")),
    ("lm_head", 128256, 2560, ("f16", "int8")),
]
GEMM_M = 128
BATCH_M = 8  # the few-token step ("m8" rows): a batch of decode tokens through DRAM weights
BITS = {"t2": 2.0, "t1": 1.6, "tl1": 2.0, "tl2": 5 / 3, "f16": 16.0, "int8": 8.0}
TERNARY = ("t2", "t1", "tl1", "tl2")


def last_level_cache_bytes():
    """Largest data/unified cache of cpu0 from sysfs (lscpu's figure); 32 MiB if unreadable."""
    best = 0
    for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (idx / "type").read_text().strip() == "Instruction":
                continue
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        best = max(best, int(size.rstrip("KMG")) * unit)
    return best or 32 << 20


def l2_cache_bytes():
    """Per-core L2 of cpu0 from sysfs; 1 MiB if unreadable."""
    try:
        idx = Path("/sys/devices/system/cpu/cpu0/cache/index2")
        size = (idx / "size").read_text().strip()
        unit = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
        return int(size.rstrip("KM")) * unit
    except (OSError, ValueError):
        return 1 << 20


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Variant:
    """One kernel at one shape: its weight copies, inputs, and the call that runs it on a copy.
    `share` reuses another variant's weights (GEMM streams the same matrices as GEMV)."""

    def __init__(self, kernel, fmt, n, k, m, rng, min_bytes, share=None):
        self.kernel, self.fmt, self.n, self.k, self.m = kernel, fmt, n, k, m
        self.x = rng.standard_normal((m, k)).astype(np.float32)
        self.out = np.empty((m, n), np.float32)
        if fmt in TERNARY:
            self.q, self.act_scale = K.quantize_rows(self.x)
            self.weight_scale = 0.0173
        if share is not None:
            self.w_int, self.row_scale, self.copies = share.w_int, share.row_scale, share.copies
            if min_bytes == -1:  # one hot copy: the weights stay in cache between calls
                self.copies = self.copies[:1]
        else:
            self.w_int = self.row_scale = None
            if fmt in TERNARY:
                self.w_int = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
                w = K.pack(fmt, self.w_int)
            elif fmt == "f16":
                w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float16)
            else:
                w = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
                self.row_scale = (rng.random(n, dtype=np.float32) * 0.01 + 0.001).astype(np.float32)
            ncopies = max(1, math.ceil(min_bytes / w.nbytes))
            self.copies = [w] + [w.copy() for _ in range(ncopies - 1)]
        self.bytes = self.copies[0].nbytes  # weight bytes one call streams
        self.next = 0
        self.times, self.cpu_share, self.dram = [], [], []

    def call(self, w):
        if self.fmt in TERNARY:
            K.ternary_linear(self.fmt, w, self.k, self.q, self.act_scale, self.weight_scale, out=self.out)
        elif self.fmt == "f16":
            K.f16_linear(w, self.x, out=self.out)
        else:
            K.int8_linear(w, self.row_scale, self.x, out=self.out)

    def validate(self, rows_per_block=8192):
        """Check the active ISA's result on copy 0 against numpy (float64, blocks of rows);
        raise AssertionError on a mismatch."""
        w = self.copies[0]
        self.call(w)
        x64 = self.x.astype(np.float64)
        got_acc = None
        if self.fmt in TERNARY:
            got_acc = K.ternary_matmul_i32(self.fmt, w, self.k, self.q)
            q64 = self.q.astype(np.float64)
        for n0 in range(0, self.n, rows_per_block):
            rows = slice(n0, min(self.n, n0 + rows_per_block))
            out = self.out[:, rows]
            if self.fmt in TERNARY:
                acc = (q64 @ self.w_int[rows].T.astype(np.float64)).astype(np.int32)  # exact
                if not np.array_equal(got_acc[:, rows], acc):
                    m, n = np.argwhere(got_acc[:, rows] != acc)[0]
                    raise AssertionError(f"{self.label()}: int32 accumulator [{m}, {n0 + n}] = "
                                         f"{got_acc[m, n0 + n]}, numpy {acc[m, n]}")
                want = (acc.astype(np.float32) / self.act_scale[:, None]) * np.float32(self.weight_scale)
                bound = 1e-6 * np.abs(want) + 1e-30
            else:
                w64 = w[rows].astype(np.float64)
                want = x64 @ w64.T
                bound = 1e-5 * (np.abs(x64) @ np.abs(w64).T) + 1e-30
                if self.fmt == "int8":
                    want *= self.row_scale[rows]
                    bound *= self.row_scale[rows]
            err = np.abs(out - want)
            if not np.all(err <= bound):
                m, n = np.unravel_index(np.argmax(err / bound), err.shape)
                raise AssertionError(f"{self.label()}: output[{m}, {n0 + n}] = {out[m, n]}, "
                                     f"numpy {want[m, n]}")

    def run_slice(self, min_seconds, threads):
        """Call the kernel on successive copies for >= min_seconds (and >= one pass when it is
        cheap); record seconds per call, and the share of the threads' wall time this process
        got the CPU for (below ~0.9 other processes were taking the cores)."""
        calls, t0, c0 = 0, time.perf_counter(), time.process_time()
        ncopies = len(self.copies)
        while True:
            self.call(self.copies[self.next])
            self.next = (self.next + 1) % ncopies
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds and (calls >= ncopies or elapsed >= 4 * min_seconds):
                break
        self.times.append(elapsed / calls)
        self.cpu_share.append((time.process_time() - c0) / (elapsed * threads))

    def label(self):
        return f"{self.kernel} {self.fmt} {self.n}x{self.k} M={self.m}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the records to this file")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per configuration")
    p.add_argument("--min-time", type=float, default=0.15, help="seconds per variant per round")
    p.add_argument("--threads", help="comma-separated thread counts (default: 1,all cores)")
    p.add_argument("--shapes", help="comma-separated shape names (default: all): "
                   + ", ".join(s[0] for s in SHAPES))
    p.add_argument("--formats", help="comma-separated formats (default: all): t2,t1,f16,int8")
    p.add_argument("--gemm-m", type=int, default=GEMM_M, help="tokens of the GEMM rows")
    p.add_argument("--batch-m", type=int, default=BATCH_M,
                   help="tokens of the few-token 'm8' rows (ternary formats; DRAM weights)")
    p.add_argument("--isa", help="comma-separated ISAs to time, or 'all' for every SIMD ISA here "
                   "(default: the active one; 'ref' only when named: the scalar reference is slow)")
    p.add_argument("--cache-multiple", type=float, default=4.0,
                   help="weight copies per shape cover this multiple of the last-level cache")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cores = K.physical_cores()
    thread_counts = ([int(t) for t in args.threads.split(",")] if args.threads
                     else sorted({1, cores}))
    shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes.split(",")]
    formats = args.formats.split(",") if args.formats else list(BITS)
    llc = last_level_cache_bytes()
    min_bytes = args.cache_multiple * llc
    simd = [i for i in K.available_isas() if i != "ref"] or ["ref"]
    isas = simd if args.isa == "all" else args.isa.split(",") if args.isa else [K.active_isa()]
    for name in isas:
        K.set_isa(name)  # ValueError now rather than after the first shape
    rng = np.random.default_rng(0)

    print(f"# {cpu_model()}, {os.cpu_count()} cpus, {cores} physical cores, "
          f"last-level cache {llc >> 20} MiB, ISA {','.join(isas)} (available "
          f"{', '.join(K.available_isas())})")
    print(f"# weights cycle over >= {min_bytes / 2**20:.0f} MiB of copies per shape; "
          f"{args.rounds} alternating rounds; medians; load average {os.getloadavg()[0]:.1f}")
    print("# DRAM: streaming-read GB/s sampled just before each GEMV slice; %DRAM: median over "
          "rounds of the kernel's GB/s over that sample")
    print("# cpu: CPU time this process got / (wall x threads); well below 100% means other "
          "processes shared the cores and the figures are pessimistic")
    dram_bytes = max(int(min_bytes), 256 << 20)
    dram_samples = {t: [K.stream_read_gbps(dram_bytes, t, 1) for _ in range(5)] for t in thread_counts}
    print("# DRAM read bandwidth, best of 5 first samples: " + ", ".join(
        f"{t} thread{'s' * (t > 1)} {max(g):.2f} GB/s" for t, g in dram_samples.items()))

    records = []
    header = (f"{'shape':<12} {'N x K':>12} {'kernel':<5} {'fmt':<5} {'isa':<6} {'thr':>3} {'M':>4} "
              f"{'time':>10} {'GB/s':>7} {'DRAM':>6} {'%DRAM':>6} {'GOPS':>8} {'tok/s':>9} {'copies':>6} "
              f"{'cpu':>4}")
    print(header)
    for name, n, k, shape_formats in shapes:
        fmts = [f for f in shape_formats if f in formats]
        if not fmts:
            continue
        variants = []
        for fmt in fmts:
            gemv = Variant("gemv", fmt, n, k, 1, rng, min_bytes)
            variants += [gemv, Variant("gemm", fmt, n, k, args.gemm_m, rng, 0, share=gemv)]
            if fmt in TERNARY:  # the same weights hot in cache ("l2" when they fit one core's
                # L2, else "l3"), and a few-token batch streaming them from DRAM like the GEMV
                hot = "l2" if gemv.bytes <= l2_cache_bytes() else "l3"
                variants += [Variant(hot, fmt, n, k, 1, rng, -1, share=gemv),
                             Variant("m8", fmt, n, k, args.batch_m, rng, 0, share=gemv)]
        for isa in isas:
            K.set_isa(isa)
            for t in thread_counts:  # validate before timing, at every thread count
                K.set_threads(t)
                for v in variants:
                    v.validate()
            for t in thread_counts:
                K.set_threads(t)
                records += time_shape(variants, name, isa, t, args, dram_bytes, dram_samples)
        del variants

    dram_all = {t: float(np.median(s)) for t, s in dram_samples.items()}
    print("\n# DRAM read bandwidth over the run, median (min-max): " + ", ".join(
        f"{t} thread{'s' * (t > 1)} {np.median(g):.2f} GB/s ({min(g):.1f}-{max(g):.1f})"
        for t, g in dram_samples.items()))
    # A kernel that reads faster than the streaming loop shows the loop is not the ceiling.
    for t in thread_counts:
        best = max((r for r in records if r["kernel"] == "gemv" and r["threads"] == t),
                   key=lambda r: r["gbps"], default=None)
        if best and best["dram_fraction"] > 1.0:
            print(f"# note: at {t} thread{'s' * (t > 1)} the {best['format']} GEMV of {best['shape']} "
                  f"read {best['gbps']:.1f} GB/s, {100 * best['dram_fraction']:.0f}% of the streaming "
                  "loop's samples: %DRAM overstates every kernel by up to that factor")
    for isa in isas:
        print_targets(records, max(thread_counts), isa)
    if args.json:
        meta = {"cpu": cpu_model(), "isas": isas, "available_isas": K.available_isas(),
                "physical_cores": cores, "llc_bytes": llc, "dram_gbps": dram_all,
                "dram_samples": {str(t): g for t, g in dram_samples.items()},
                "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": args.rounds,
                "load_average_end": os.getloadavg()[0]}
        Path(args.json).write_text(json.dumps({"meta": meta, "records": records}, indent=1))
        print(f"# wrote {len(records)} records to {args.json}")


def time_shape(variants, name, isa, t, args, dram_bytes, dram_samples):
    """Alternating rounds of every variant of one shape at t threads, each GEMV slice right
    after a DRAM sample; prints and returns one record per variant."""
    for v in variants:
        v.times, v.cpu_share, v.dram = [], [], []
    for _ in range(args.rounds):
        for v in variants:
            if v.kernel == "gemv" or not v.dram:
                dram_samples[t].append(K.stream_read_gbps(dram_bytes, t, 1))
            v.dram.append(dram_samples[t][-1])
            v.run_slice(args.min_time, t)
    records = []
    for v in variants:
        n, k = v.n, v.k
        sec = float(np.median(v.times))
        dram = float(np.median(v.dram))
        frac = float(np.median([v.bytes / s / 1e9 / d for s, d in zip(v.times, v.dram)]))
        rec = {
            "kernel": v.kernel, "format": v.fmt, "isa": isa, "threads": t,
            "N": n, "K": k, "M": v.m, "seconds": sec, "gbps": v.bytes / sec / 1e9,
            "dram_gbps": dram, "dram_fraction": frac, "gops": 2.0 * v.m * n * k / sec / 1e9,
            "tokens_per_s": v.m / sec, "shape": name, "bits_per_weight": BITS[v.fmt],
            "weight_bytes": v.bytes, "copies": len(v.copies),
            "seconds_all_rounds": [float(x) for x in v.times],
            "dram_gbps_rounds": [float(x) for x in v.dram],
            "cpu_share": float(np.median(v.cpu_share)),
        }
        records.append(rec)
        print(f"{name:<12} {f'{n}x{k}':>12} {v.kernel:<5} {v.fmt:<5} {isa:<6} {t:>3} {v.m:>4} "
              f"{sec * 1e3:>8.3f}ms {rec['gbps']:>7.2f} {dram:>6.1f} {100 * frac:>5.0f}% "
              f"{rec['gops']:>8.1f} {rec['tokens_per_s']:>9.1f} {len(v.copies):>6} "
              f"{100 * rec['cpu_share']:>3.0f}%")
    sys.stdout.flush()
    return records


def print_targets(records, threads, isa):
    """Issue 3's targets at the highest thread count, one line per shape and target."""
    get = {(r["kernel"], r["format"], r["N"], r["K"]): r for r in records
           if r["threads"] == threads and r["isa"] == isa}
    print(f"\n# targets, {isa}, {threads} threads (weights from DRAM)")
    for name, n, k, _ in SHAPES:
        t2, t1, f16 = (get.get(("gemv", f, n, k)) for f in ("t2", "t1", "f16"))
        lines = []
        if t2:
            frac = t2["dram_fraction"]
            lines.append(("T2 GEMV >= 80% DRAM", f"{100 * frac:.0f}% ({t2['gbps']:.1f} GB/s, "
                          f"DRAM {t2['dram_gbps']:.1f})", frac >= 0.8))
        if t2 and t1:
            r = t2["seconds"] / t1["seconds"]
            lines.append(("T1 GEMV wall <= T2", f"T1 {t1['seconds'] * 1e6:.0f} us vs T2 "
                          f"{t2['seconds'] * 1e6:.0f} us ({r:.2f}x)", r >= 1.0))
        for fmt, rec in (("T2", t2), ("T1", t1)):
            if rec and f16:
                r = f16["seconds"] / rec["seconds"]
                lines.append((f"{fmt} GEMV >= 6x fp16", f"{r:.2f}x", r >= 6.0))
        for fmt in ("t2", "t1", "f16", "int8"):
            gv, gm = get.get(("gemv", fmt, n, k)), get.get(("gemm", fmt, n, k))
            if gv and gm:
                r = gm["tokens_per_s"] / gv["tokens_per_s"]
                # The same GEMM against a GEMV that streamed at the full measured bandwidth:
                # where this is below 10, the target needs a slower GEMV, not a faster GEMM.
                at_dram = gm["tokens_per_s"] * gv["weight_bytes"] / (gv["dram_gbps"] * 1e9)
                ok = r >= 10.0 if fmt in ("t2", "t1") else None
                lines.append((f"{fmt} GEMM M={gm['M']} >= 10x GEMV tok/s", f"{r:.1f}x "
                              f"({gm['gops']:.0f} GOPS; {at_dram:.1f}x a GEMV at 100% DRAM)", ok))
        lines += tl1_lines(get, n, k)
        for what, value, ok in lines:
            mark = "" if ok is None else ("ok" if ok else "MISS")
            print(f"{name:<12} {f'{n}x{k}':>12}  {what:<32} {value:<46} {mark}")


def tl1_lines(get, n, k):
    """TL1 and TL2 beside T2 at one shape: weights/s of a GEMV (DRAM and hot in cache), GEMM
    GOPS, and the step cost of a few-token batch over a GEMV's (a batch must cost far less than
    M GEMVs)."""
    lines = []
    for fmt in ("tl1", "tl2"):
        tag = fmt.upper()
        for kernel in ("gemv", "l2", "l3", "gemm"):
            t2, tl = get.get((kernel, "t2", n, k)), get.get((kernel, fmt, n, k))
            if t2 and tl:
                if kernel == "gemm":
                    value = f"{tag} {tl['gops']:.0f} vs T2 {t2['gops']:.0f} GOPS"
                else:
                    value = (f"{tag} {n * k / tl['seconds'] / 1e9:.1f} vs T2 "
                             f"{n * k / t2['seconds'] / 1e9:.1f} Gweights/s")
                lines.append((f"{tag} {kernel} vs T2", value + f" ({t2['seconds'] / tl['seconds']:.2f}x)", None))
    for fmt in ("t2", "tl1", "tl2"):
        gv, b = get.get(("gemv", fmt, n, k)), get.get(("m8", fmt, n, k))
        if gv and b:
            lines.append((f"{fmt} M={b['M']} / M=1 step cost", f"{b['seconds'] / gv['seconds']:.2f}x "
                          f"({b['seconds'] * 1e6:.0f} vs {gv['seconds'] * 1e6:.0f} us)", None))
    return lines

if __name__ == "__main__":
    main()
