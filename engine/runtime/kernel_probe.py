"""The one-time micro-probe behind the runtime kernel choice, and its cache on disk.

A probe times one ternary linear of shape [N, K] in every candidate layout at one token count
M (engine/runtime/kernel_choice.py's bucket representatives), on seeded random ternary weights,
for the active ISA and thread count. Layouts alternate inside every round and the best round
counts, so a neighbour's burst hits all of them alike. For the one- and few-token buckets the
weights cycle over copies of COLD_BYTES in all, so they come from DRAM as a decode step's do;
a GEMM reuses each weight M times, so one copy (hot in cache) stands for it.

Cache: one JSON file per CPU (model name + ISA flags hashed), default
~/.cache/ternary-engine/probe-<cpu-hash>.json (TERNARY_ENGINE_CACHE or XDG_CACHE_HOME move the
root, as for the synthetic models), {"version", "cpu", "entries": {key: seconds per call}},
key = "layout|NxK|M|isa|threads". An unreadable or foreign file counts as empty; a cache that
cannot be written is skipped (the probe then reruns next time)."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time

import numpy as np

from engine import kernels as K

VERSION = 1                 # bump when a kernel change makes old timings misleading
COLD_BYTES = 48 << 20       # > a 32 MB L3: the one- and few-token probes read from DRAM
MAX_COPIES = 1024
ROUNDS = 3
MIN_SECONDS = 2e-3          # each timed round runs at least this long


def cpu_id() -> str:
    """A short hash of this CPU's model name and feature flags (Linux /proc/cpuinfo; else
    platform's processor and machine strings)."""
    name = flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Hardware") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if name and flags:
                    break
    except OSError:
        pass
    text = f"{name or platform.processor()}|{platform.machine()}|{flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_path() -> str:
    root = os.environ.get("TERNARY_ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ternary-engine")
    return os.path.join(root, f"probe-{cpu_id()}.json")


def key(layout: str, n: int, k: int, m: int, isa: str, threads: int) -> str:
    return f"{layout}|{n}x{k}|{m}|{isa}|{threads}"


class ProbeCache:
    """Probe timings on disk: get() before measuring, put() then save() after. fresh: get()
    sees only what was put since (the file's other entries are kept and saved back)."""

    def __init__(self, path: str, fresh: bool = False):
        self.path = path
        self.entries: dict[str, float] = {}
        self.dirty = False
        self.fresh, self.new = fresh, set()
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") == VERSION and data.get("cpu") == cpu_id():
                self.entries = {str(k): float(v) for k, v in data["entries"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass

    def get(self, k: str) -> float | None:
        return self.entries.get(k) if not self.fresh or k in self.new else None

    def put(self, k: str, seconds: float) -> None:
        self.entries[k] = float(seconds)
        self.new.add(k)
        self.dirty = True

    def save(self) -> bool:
        """Write atomically (temp file + rename); False if the directory is not writable."""
        if not self.dirty:
            return True
        try:
            d = os.path.dirname(self.path) or "."
            os.makedirs(d, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".probe-", dir=d)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": VERSION, "cpu": cpu_id(), "entries": self.entries}, f,
                          indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            return False
        self.dirty = False
        return True


def _operands(n: int, k: int, m: int, layouts, cold: bool):
    """Seeded weights packed in every layout (copies enough to leave the caches when cold),
    int8 activations q [m, k], scales [m] and the output [m, n]."""
    rng = np.random.default_rng([n, k, m])
    w = rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    mats = {}
    for layout in layouts:
        p = K.pack(layout, w)
        copies = min(MAX_COPIES, max(1, -(-COLD_BYTES // max(p.nbytes, 1)))) if cold else 1
        mats[layout] = [p] + [p.copy() for _ in range(copies - 1)]
    q = rng.integers(-127, 128, size=(m, k), dtype=np.int8)
    return mats, q, np.ones(m, np.float32), np.empty((m, n), np.float32)


def measure(n: int, k: int, m: int, layouts, cold: bool) -> dict[str, float]:
    """Seconds per ternary_linear call [m, k] x [n, k]^T for each layout (best of ROUNDS
    alternating rounds, each at least MIN_SECONDS and one pass over the copies)."""
    mats, q, s, out = _operands(n, k, m, layouts, cold)
    # One thread runs the kernel on this thread: its CPU time is the figure a busy machine
    # disturbs least (time spent descheduled does not count). More threads: wall time.
    clock = time.thread_time if K.threads() == 1 else time.perf_counter
    best = {layout: float("inf") for layout in layouts}
    order = list(layouts)
    for r in range(ROUNDS):
        for layout in order[r % len(order):] + order[:r % len(order)]:
            ws = mats[layout]
            K.ternary_linear(layout, ws[-1], k, q, s, 1.0, out=out)  # warm the code path
            calls, t0 = 0, clock()
            while True:
                K.ternary_linear(layout, ws[calls % len(ws)], k, q, s, 1.0, out=out)
                calls += 1
                dt = clock() - t0
                if calls >= len(ws) and dt >= MIN_SECONDS:
                    break
            best[layout] = min(best[layout], dt / calls)
    return best
