"""Runtime kernel choice: which packed ternary layout each linear runs at each token count M.

Every layout of engine.kernels.FORMATS is exact (int32 accumulators equal the reference), so
the choice changes speed only, never a result. Each layout's kernel switches between its GEMV
and GEMM inner loops by M itself (at the crossovers measured per ISA, csrc/); what is chosen
here is the layout per M bucket:

    bucket  M          probed at
    gemv    1          M = 1    (decode)
    few     2 .. 16    M = 8    (a server step, short prompts)
    gemm    >= 17      M = 128  (prefill)

per projection group the model fuses into one call (q/k/v, o, gate/up, down: all members of a
group share a layout), for the active ISA and thread count at load time. Times come from the
one-time micro-probe (engine/runtime/kernel_probe.py, cached on disk per CPU) or, with probing
off, from TABLE (measured, benchmarks/RESULTS.md). A layout other than the file's is a repack
at load (unpack + pack, about 5 ns per weight on one core).

Environment (read when a Model is built; Settings.from_env):
  TERNARY_KERNEL  auto (default) | t2 | t1 | tl1 | tl2 (every bucket) | bucket=layout[,...]
                  (e.g. gemv=tl2,gemm=t2; the buckets not named stay automatic)
  TERNARY_PROBE   on (default: cached probe; a model under PROBE_MIN_BYTES of ternary weights
                  uses TABLE instead: probing costs about a second per shape, more than such a
                  model takes to load) | off (TABLE, else the file's layout) |
                  fresh (probe again, overwrite the cache)
  TERNARY_REPACK  auto (default: one layout per group, the one whose worst bucket is closest to
                  that bucket's best) | dual (the best layout per bucket: up to two copies of a
                  group's weights) | off (the file's layout only; forcing another is an error)
  TERNARY_PROBE_CACHE  the probe cache file (default kernel_probe.default_cache_path())
"""
from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine import kernels as K
from engine.runtime import kernel_probe

log = logging.getLogger("engine.kernels")

BUCKETS = ("gemv", "few", "gemm")
FEW_MAX = 16
PROBE_M = (1, 8, 128)
GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))  # Model._project's fused calls
MIN_GAIN = 1.05   # leave the file's layout only for a probed gain of at least this
PROBE_MIN_BYTES = 32 << 20  # smaller models (weights in L2/L3, loads in ms) use TABLE under "on"
# Probing off: best layout per bucket and the best single layout, per ISA, from the kernel
# benchmarks on Zen 4 (AVX-512: TL2 GEMV 2.0x T2 from L2, 1.45x from DRAM, GEMM 1.64-1.89x;
# AVX2: TL2 GEMV 2.0x, M=8 step 1.18x, GEMM 0.93x). Other ISAs: the file's layout.
TABLE = {"avx512": (("tl2", "tl2", "tl2"), "tl2"), "avx2": (("tl2", "tl2", "t2"), "tl2")}


class KernelChoiceError(ValueError):
    """A bad TERNARY_KERNEL / TERNARY_PROBE / TERNARY_REPACK value or a contradictory setting."""


def bucket_index(m: int) -> int:
    return 0 if m <= 1 else 1 if m <= FEW_MAX else 2


@dataclass(frozen=True)
class Settings:
    forced: tuple = (None, None, None)   # per bucket: a layout, or None for automatic
    probe: str = "on"                    # on | off | fresh
    repack: str = "auto"                 # auto | dual | off
    cache_path: str | None = None        # None: kernel_probe.default_cache_path()

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        probe = env.get("TERNARY_PROBE", "on").strip().lower() or "on"
        probe = {"1": "on", "0": "off"}.get(probe, probe)
        repack = env.get("TERNARY_REPACK", "auto").strip().lower() or "auto"
        if probe not in ("on", "off", "fresh"):
            raise KernelChoiceError(f"TERNARY_PROBE={probe!r}: expected on, off or fresh")
        if repack not in ("auto", "dual", "off"):
            raise KernelChoiceError(f"TERNARY_REPACK={repack!r}: expected auto, dual or off")
        return cls(parse_forced(env.get("TERNARY_KERNEL", "")), probe, repack,
                   env.get("TERNARY_PROBE_CACHE") or None)


def parse_forced(text: str) -> tuple:
    """TERNARY_KERNEL's value -> a layout or None per bucket."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return (None,) * len(BUCKETS)
    expected = (f"expected auto, one of {', '.join(K.FORMATS)}, or bucket=layout pairs "
                f"(buckets {', '.join(BUCKETS)}), e.g. gemv=tl2,gemm=t2")
    if "=" not in text:
        if text not in K.FORMATS:
            raise KernelChoiceError(f"TERNARY_KERNEL={text!r}: unknown layout; {expected}")
        return (text,) * len(BUCKETS)
    forced = [None] * len(BUCKETS)
    for part in text.split(","):
        b, _, layout = (x.strip() for x in part.partition("="))
        if b not in BUCKETS or layout not in K.FORMATS or forced[BUCKETS.index(b)] is not None:
            raise KernelChoiceError(f"TERNARY_KERNEL={text!r}: bad or repeated {part.strip()!r}; {expected}")
        forced[BUCKETS.index(b)] = layout
    return tuple(forced)


@dataclass
class KernelPlan:
    """What Model chose: per group signature ((N, K) of its members) a layout per bucket."""
    isa: str
    threads: int
    file_layout: str
    choices: dict = field(default_factory=dict)    # signature -> (layout per bucket)
    times: dict = field(default_factory=dict)      # signature -> {layout: [s per bucket]}
    source: str = "file"                           # probe | table | forced | file (| mixed)
    repacked_bytes: int = 0                        # extra packed weight bytes held in memory
    repack_s: float = 0.0
    probe_s: float = 0.0
    probes: int = 0                                # probes measured now (cache misses)

    def per_bucket(self) -> str:
        """'gemv tl2, few tl2, gemm t2' (a bucket's layouts joined by '+' when groups differ)."""
        parts = []
        for b, name in enumerate(BUCKETS):
            used = sorted({c[b] for c in self.choices.values()}) or [self.file_layout]
            parts.append(f"{name} {'+'.join(used)}")
        return ", ".join(parts)

    def summary(self) -> str:
        return (f"kernel choice ({self.isa}, {self.threads} thread{'s' * (self.threads != 1)}, "
                f"{self.source}): {self.per_bucket()}; file {self.file_layout}, repacked "
                f"{self.repacked_bytes / 1e6:.1f} MB in {self.repack_s:.1f} s; "
                f"{self.probes} probes in {self.probe_s:.1f} s")

    def details(self) -> list[str]:
        """summary(), then one line per group: its shapes, the layout per bucket and, when
        probed, the probe's microseconds per call of each layout at each bucket's M."""
        lines = [self.summary()]
        for sig, c in self.choices.items():
            shapes = " + ".join(f"{n}x{k}" for n, k in sig)
            line = f"  [{shapes}] " + ", ".join(f"{b} {lay}" for b, lay in zip(BUCKETS, c))
            if sig in self.times:
                line += "  (us/call at M=" + "/".join(map(str, PROBE_M)) + ": " + "; ".join(
                    f"{lay} " + "/".join(f"{1e6 * t:.0f}" for t in ts) for lay, ts in self.times[sig].items()) + ")"
            lines.append(line)
        return lines

    def as_dict(self) -> dict:
        return {"isa": self.isa, "threads": self.threads, "file_layout": self.file_layout,
                "source": self.source, "per_bucket": self.per_bucket(),
                "groups": {"+".join(f"{n}x{k}" for n, k in sig): dict(zip(BUCKETS, c))
                           for sig, c in self.choices.items()},
                "repacked_mb": self.repacked_bytes / 1e6, "repack_s": self.repack_s,
                "probe_s": self.probe_s, "probes": self.probes}


def _probe_times(sig, layouts, plan: KernelPlan, cache) -> dict:
    """{layout: [seconds per bucket]} for one group: the sum of its members' probes."""
    times = {layout: [0.0] * len(BUCKETS) for layout in layouts}
    for b, m in enumerate(PROBE_M):
        for n, k in sig:
            keys = {layout: kernel_probe.key(layout, n, k, m, plan.isa, plan.threads) for layout in layouts}
            missing = [lay for lay in layouts if cache.get(keys[lay]) is None]
            if missing:
                t0 = time.perf_counter()
                for layout, s in kernel_probe.measure(n, k, m, missing, cold=b < 2).items():
                    cache.put(keys[layout], s)
                plan.probe_s += time.perf_counter() - t0
                plan.probes += len(missing)
            for layout in layouts:
                times[layout][b] += cache.get(keys[layout])
    return times


def _combine(times: dict, auto: list, repack: str, file_layout: str) -> dict:
    """{bucket: layout} for the automatic buckets from probed times."""
    best = {b: min(t[b] for t in times.values()) for b in auto}
    if repack == "dual":
        out = {}
        for b in auto:
            top = min(times, key=lambda lay: times[lay][b])
            out[b] = file_layout if times[file_layout][b] <= best[b] * MIN_GAIN else top
        return out
    worst = {lay: max(t[b] / best[b] for b in auto) for lay, t in times.items()}
    pick = min(worst, key=worst.get)
    if worst[file_layout] <= worst[pick] * MIN_GAIN:
        pick = file_layout
    return {b: pick for b in auto}


def _decide(sig, s: Settings, plan: KernelPlan, cache) -> tuple[tuple, str]:
    """(layout per bucket, source) for one group signature."""
    out = dict(enumerate(s.forced))
    auto = [b for b, lay in out.items() if lay is None]
    source = "forced" if not auto else "file"
    candidates = [plan.file_layout] if s.repack == "off" else \
        [plan.file_layout] + [f for f in K.FORMATS if f != plan.file_layout]
    if auto and len(candidates) == 1:
        out.update({b: plan.file_layout for b in auto})
    elif auto and s.probe == "off":
        per_bucket, single = TABLE.get(plan.isa, ((plan.file_layout,) * len(BUCKETS), plan.file_layout))
        out.update({b: per_bucket[b] if s.repack == "dual" else single for b in auto})
        source = "table"
    elif auto:
        plan.times[sig] = times = _probe_times(sig, candidates, plan, cache)
        out.update(_combine(times, auto, s.repack, plan.file_layout))
        source = "probe"
    layouts = tuple(out[b] for b in range(len(BUCKETS)))
    if s.repack == "off" and any(lay != plan.file_layout for lay in layouts):
        raise KernelChoiceError(f"TERNARY_KERNEL forces {'/'.join(layouts)} but TERNARY_REPACK=off "
                                f"and the file holds {plan.file_layout}")
    return layouts, source


def _release_file_pages(arr) -> None:
    """Drop the resident pages of the read-only file mapping under arr (they refault from the
    page cache if touched again): after a full repack the file's weights are not read."""
    while arr is not None and not isinstance(arr, mmap.mmap):  # ndarray .base ... memoryview .obj
        arr = arr.obj if isinstance(arr, memoryview) else getattr(arr, "base", None)
    if arr is not None and hasattr(arr, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            arr.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def _repack(file_layout: str, jobs: list) -> list:
    """Packed weights for each (Linear, layout) job, from the file's layout; pack and unpack
    release the GIL, so the jobs run on the kernel thread count."""
    def one(job):
        lin, layout = job
        return K.pack(layout, K.unpack(file_layout, lin.weight, lin.k))
    if len(jobs) < 2 or K.threads() < 2:
        return [one(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=K.threads()) as ex:
        return list(ex.map(one, jobs))


def _apply(model, plan: KernelPlan) -> None:
    """Every Linear gets .plan (layout per bucket) and .packed {layout: weights} for exactly
    the layouts its plan uses (repacked from the file's where needed)."""
    t0, jobs, uses = time.perf_counter(), [], []
    for L in model.layers:
        for names in GROUPS:
            group = [getattr(L, n) for n in names]
            layouts = plan.choices[tuple((lin.weight.shape[0], lin.k) for lin in group)]
            for lin in group:
                have = {**getattr(lin, "packed", {}), plan.file_layout: lin.weight}
                jobs += [(lin, lay) for lay in sorted(set(layouts) - set(have))]
                uses.append((lin, layouts, {lay: have[lay] for lay in set(layouts) if lay in have}))
    made = dict(zip(((id(lin), lay) for lin, lay in jobs), _repack(plan.file_layout, jobs)))
    extra, file_used = 0, False
    for lin, layouts, packed in uses:
        packed.update({lay: made[(id(lin), lay)] for lay in set(layouts) - set(packed)})
        lin.packed, lin.plan = packed, layouts
        extra += sum(w.nbytes for lay, w in packed.items() if lay != plan.file_layout)
        file_used |= plan.file_layout in layouts
    plan.repacked_bytes, plan.repack_s = extra, time.perf_counter() - t0
    if extra and not file_used and model.layers:
        _release_file_pages(model.layers[0].q.weight)


def choose(model, settings: Settings | None = None) -> KernelPlan:
    """Choose and apply a layout per bucket for every linear group of a ternary model."""
    s = settings or Settings.from_env()
    weight_bytes = sum(getattr(L, n).weight.nbytes for L in model.layers for g in GROUPS for n in g)
    if s.probe == "on" and weight_bytes < PROBE_MIN_BYTES:
        s = dataclasses.replace(s, probe="off")
    plan = KernelPlan(K.active_isa(), K.threads(), model.args.weight_format)
    cache = kernel_probe.ProbeCache(s.cache_path or kernel_probe.default_cache_path(),
                                    fresh=s.probe == "fresh") if s.probe != "off" else None
    sources = set()
    for L in model.layers:
        for names in GROUPS:
            sig = tuple((getattr(L, n).weight.shape[0], getattr(L, n).k) for n in names)
            if sig not in plan.choices:
                plan.choices[sig], src = _decide(sig, s, plan, cache)
                sources.add(src)
    plan.source = sources.pop() if len(sources) == 1 else "mixed" if sources else "file"
    if cache is not None and not cache.save():
        log.info("kernel choice: probe cache %s not writable", cache.path)
    _apply(model, plan)
    log.info(plan.summary())
    return plan
