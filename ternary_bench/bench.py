"""ternary-bench: tokens/s of ternary (T2, T1) vs fp16 of the same model, next to DRAM bandwidth.

    ternary-bench                              # synthetic bitnet-2b: t2, t1 (f16 and q4 heads), f16
    ternary-bench model.tpk                    # a real model (its other formats made and cached)
    ternary-bench default                      # the embedded default model
    ternary-bench --shape bitnet-700m,bitnet-2b --lm-head int8,q4 --json out.json --plot out.png

What one run does, per model:
1. Makes (or finds in the cache) the model in every format asked for: synthetic shapes come from
   ternary_bench.synthetic; a real .tpk gets siblings via synthetic.variant (repacked / dequantized).
2. Starts one worker process per format (so each has its own peak RSS and no model's pages
   count against another), opens the model there, and validates before anything is timed:
   - kernels: for every distinct linear shape of the model (and the lm_head) one GEMV (M=1),
     one small GEMM (M=19, odd) over all rows, and one GEMM at the largest prefill length over
     the first 128 rows, with the active ISA at the largest thread count against the 'ref' ISA:
     ternary int32 accumulators and q4 head outputs must be identical; f16 / int8 outputs
     within 1e-4 of sum|x||w| (float sums in another order);
   - the model: T1 logits must equal T2 logits bit for bit (same integers, same epilogue); f16
     logits are reported as a relative difference (f16 does not quantize activations).
3. Times, alternating formats (the order rotates every repetition) inside each repetition and
   thread count, on a shared machine where only ratios from one run mean much:
   - ppN: one forward of N prompt tokens at position 0 (logits of the last token only, as the
     engine's prefill and llama-bench do), after a 2-token prefill that pages the weights in;
   - tgN: N decode steps (Model.step) at positions 0..N-1, after one warm-up step;
   - the machine's DRAM read bandwidth (engine._kernels.stream_read_gbps, the loop
     benchmarks/bench_kernels.py uses) at the same thread count, in every repetition.
   Reported tok/s are medians over repetitions. The bandwidth a shared machine leaves drifts
   (20-33 GB/s within minutes here), so every tg run is paired with a bandwidth sample taken
   just before it, and %DRAM is the median over repetitions of (weights GB/s of that run) /
   (that sample), as benchmarks/bench_kernels.py pairs its GEMVs. The JSON also holds the best
   sample of the run (dram_gbps_best, as STREAM would report the machine) and pct_dram_best.
4. Python overhead of a decode step (at the largest thread count, each repetition): every
   compute function of engine.kernels (and any reference to one held by another engine module)
   is wrapped by a timer, perf_counter around the bound call, so pybind11's argument checks
   count as kernel time. 32 decode steps run wrapped; per step, with W its wall time, K the
   time inside kernel calls, C the number of calls and c the timer's own cost outside its
   window per call (calibrated on a wrapped no-op in the same process),
       overhead = (W - K - C*c) / (W - C*c),
   and the median over the steps is reported. Everything between kernel calls counts as
   overhead: Python, numpy element-wise ops (residual adds, relu^2), KV-cache copies.

Columns: bits/w = bytes of the packed linear weights x 8 / their count (padding included);
weights MB/tok = bytes one decode step must read (every linear plus the lm_head; the embedding
row is negligible); GB/s = that x tg tok/s; %DRAM = GB/s / the bandwidth measured just before
(median over repetitions, see 3.); x fp16 = tok/s over the fp16 model's at the same threads;
peak RSS = the worker's VmHWM over the configuration (mapped weights + KV cache + buffers);
kernels gemv/few/gemm = the layout each M bucket ran (engine/runtime/kernel_choice.py: a t2 file
may run tl2; bits/w and MB/tok stay the file's). --kernel a,b,...: each ternary model once per
TERNARY_KERNEL value, labelled "FORMAT k=VALUE"; every choice must give identical logits.

--llama-bench PATH (llama.cpp's llama-bench; llama-quantize from the same directory or
--llama-quantize): the f16 model is written as GGUF with the `gguf` package (architecture
"bitnet" when the head is tied, "llama" when not: llama.cpp's bitnet graph has no separate
output head, and the two graphs differ only by two RMSNorms per layer), quantized to TQ2_0 and
TQ1_0 with llama-quantize, and llama-bench runs each (-p/-n/-t as ours, -r 1) once per
repetition, in the same alternation; its rows join the table ("llama.cpp TQ2_0" ...).
--ik-llama-bench PATH does the same with ik_llama.cpp's binaries (IQ2_BN and IQ1_BN, its
ternary types; rows "ik_llama.cpp IQ2_BN" ...), and the targets then compare our best ternary
row with its best at each test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from engine.formats import tpk

DRAM_MB = 256                   # bandwidth buffer: 8x this machine's 32 MB L3
VALIDATE_GEMM_M = 19            # odd: exercises the GEMM kernels' row-tile remainders
VALIDATE_SLICE_ROWS = 128       # rows checked at the largest prefill length
OVERHEAD_STEPS = 32
COMPUTE_KERNELS = ("ternary_linear", "ternary_linear_fused", "ternary_matmul_i32", "f16_linear",
                   "f16_linear_fused", "int8_linear", "q4_linear", "quantize_rows", "rmsnorm_quantize_rows",
                   "rmsnorm", "rope_neox", "attention")


class BenchError(Exception):
    """A user error or a failed validation: one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# helpers shared by parent and workers


def peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def weight_stats(t, config) -> dict:
    """Bytes a decode step reads and bits per linear weight, from a Tpk's tensors."""
    from engine.formats import tpk
    shapes = tpk.linear_shapes(config)
    n_weights = sum(n * k for n, k in shapes.values())
    lin = sum(t[f"{p}.weight"].nbytes + (t[f"{p}.scale"].nbytes if f"{p}.scale" in t else 0)
              for p in shapes)
    if "lm_head.weight" in t:
        head = sum(a.nbytes for name, a in t.items() if name.startswith("lm_head."))
    else:
        head = t["embed"].nbytes
    return dict(linear_weights=n_weights, linear_bytes=lin, head_bytes=head,
                bytes_per_token=lin + head, bits_per_weight=8.0 * lin / n_weights)


# ---------------------------------------------------------------------------------------------
# validation: active ISA vs the scalar reference, on the model's own shapes


def _check_close(name, got, want, bound):
    err = np.abs(got.astype(np.float64) - want)
    tol = 1e-4 * bound + 1e-6
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        raise BenchError(f"{name}: active ISA differs from ref at {tuple(int(x) for x in i)}: "
                         f"{got[i]} vs {want[i]}")
    return float((err / np.maximum(bound, 1e-30)).max())


def _abs_product(x, w, row_scale=None, rows_per_chunk=8192):
    """|x| @ |w|.T (times row_scale per output row), f32 [M, N], a chunk of w's rows at a time."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    ax = np.abs(x)
    for r0 in range(0, w.shape[0], rows_per_chunk):
        wf = np.abs(w[r0:r0 + rows_per_chunk].astype(np.float32))
        if row_scale is not None:
            wf *= row_scale[r0:r0 + rows_per_chunk, None]
        out[:, r0:r0 + len(wf)] = ax @ wf.T
    return out


def validate_kernels(t, config, m_large: int, threads: int, seed: int = 0) -> dict:
    """Run the model's distinct linear shapes with the active ISA and with 'ref'; raise
    BenchError on a mismatch. Returns {"isa", "checked": ["NxK@M", ...], "max_rel_err"}."""
    from engine import kernels
    from engine.formats import tpk
    fmt = config["weight_format"]
    active = kernels.active_isa()
    rng = np.random.default_rng(seed)
    first = {}
    for p, nk in tpk.linear_shapes(config).items():
        first.setdefault(nk, p)
    jobs = [(f"{p}.weight", n, k) for (n, k), p in first.items()]
    if "lm_head.weight" in t:
        jobs.append(("lm_head.weight", config["vocab_size"], config["hidden_size"]))
    else:
        jobs.append(("embed", config["vocab_size"], config["hidden_size"]))
    max_rel, done = 0.0, []
    kernels.set_threads(threads)
    try:
        for name, n, k in jobs:
            w = t[name]
            if w.dtype == np.float32:  # a tied f32 embedding: the head is numpy's matmul, no kernel
                continue
            head = not name.startswith("layers.")
            for m, rows in ((1, n), (VALIDATE_GEMM_M, n), (m_large, min(n, VALIDATE_SLICE_ROWS))):
                if head and m > 1 and rows == n:
                    continue  # the head runs one token at a time (last_only); ref GEMM too slow
                wr = w[:rows]
                if "lm_head.sub" in t and name == "lm_head.weight":  # q4: integer, bit for bit
                    x = rng.standard_normal((m, k), dtype=np.float32)
                    out = {}
                    for isa in (active, "ref"):
                        kernels.set_isa(isa)
                        out[isa] = kernels.q4_linear(wr, t["lm_head.sub"][:rows],
                                                     t["lm_head.scale"][:rows], x)
                    if not np.array_equal(out[active], out["ref"]):
                        raise BenchError(f"{name} (q4 {rows}x{k}, M={m}): {active} differs from ref")
                elif w.dtype == np.uint8:  # packed ternary: int32 accumulators bit for bit
                    q = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
                    q[:, : min(k, 7)] = 127
                    q[0, -1] = -128
                    out = {}
                    for isa in (active, "ref"):
                        kernels.set_isa(isa)
                        out[isa] = kernels.ternary_matmul_i32(fmt, wr, k, q)
                    if not np.array_equal(out[active], out["ref"]):
                        bad = np.argwhere(out[active] != out["ref"])[0]
                        raise BenchError(f"{name} ({fmt} {rows}x{k}, M={m}): {active} differs from "
                                         f"ref at {tuple(int(x) for x in bad)}")
                else:
                    x = rng.standard_normal((m, k), dtype=np.float32)
                    out = {}
                    scale = t.get("lm_head.scale") if name == "lm_head.weight" else None
                    for isa in (active, "ref"):
                        kernels.set_isa(isa)
                        out[isa] = (kernels.int8_linear(wr, scale[:rows], x) if w.dtype == np.int8
                                    else kernels.f16_linear(wr, x))
                    bound = _abs_product(x, wr, None if scale is None else scale[:rows])
                    max_rel = max(max_rel, _check_close(f"{name} ({w.dtype} {rows}x{k}, M={m})",
                                                        out[active], out["ref"].astype(np.float64), bound))
                done.append(f"{rows}x{k}@M{m}")
    finally:
        kernels.set_isa(active)
    return {"isa": active, "checked": done, "max_rel_err": max_rel}


# ---------------------------------------------------------------------------------------------
# Python overhead: a timer around every compute kernel


class KernelTimer:
    """Wraps engine.kernels' compute functions (and references to them held by other engine
    modules) with perf_counter timers while active."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._saved = []

    def __enter__(self):
        from engine import _kernels, kernels
        originals = {name: getattr(_kernels, name) for name in COMPUTE_KERNELS if hasattr(_kernels, name)}
        wrapped = {name: self._wrap(fn) for name, fn in originals.items()}
        by_id = {id(fn): name for name, fn in originals.items()}
        modules = [m for n, m in list(sys.modules.items())
                   if m is not None and (n == "engine" or n.startswith("engine.")) and n != __name__]
        for mod in modules:
            for attr, val in list(vars(mod).items()):
                if id(val) in by_id and val is originals[by_id[id(val)]]:
                    self._saved.append((mod, attr, val))
                    setattr(mod, attr, wrapped[by_id[id(val)]])
        if not any(mod is kernels for mod, _, _ in self._saved):
            raise BenchError("could not wrap engine.kernels for the overhead measurement")
        return self

    def _wrap(self, fn):
        clock = time.perf_counter

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += clock() - t0
                self.calls += 1
        return timed

    def __exit__(self, *exc):
        for mod, attr, val in reversed(self._saved):
            setattr(mod, attr, val)
        self._saved.clear()


# ---------------------------------------------------------------------------------------------
# the worker: one model file in its own process


class Runner:
    """Holds one opened model; every method returns plain data (it runs in a worker process)."""

    def __init__(self, path: str, ctx: int, seed: int = 0):
        from engine.formats import tpk
        from engine.runtime.model import Model
        t0 = time.perf_counter()
        self.tpk = tpk.read(path)
        self.model = Model(self.tpk, ctx=ctx)
        self.open_s = time.perf_counter() - t0
        self.config = self.tpk.config
        vocab = self.config["vocab_size"]
        self.ids = np.random.default_rng(seed).integers(3, vocab, size=ctx).astype(np.int64)

    def info(self) -> dict:
        st = weight_stats(self.tpk.tensors, self.config)
        st.update(file_bytes=os.path.getsize(self.tpk.path), open_s=self.open_s,
                  weight_format=self.config["weight_format"],
                  lm_head_format=self.config["lm_head_format"], config=self.config,
                  kv_bytes=self.model.cache.nbytes)
        return st

    def validate(self, m_large: int, threads: int) -> dict:
        return validate_kernels(self.tpk.tensors, self.config, m_large, threads)

    def _threads(self, threads: int) -> None:
        """Set the thread count; the kernel choice is per thread count, so choose again."""
        from engine import kernels
        kernels.set_threads(threads)
        plan = self.model.kernel_plan
        if plan is not None and plan.threads != threads:
            self.model.kernel_plan = self.model.choose_kernels()

    def kernels(self) -> str:
        """The layouts chosen per M bucket, 'gemv/few/gemm' ('-' for an f16 model)."""
        plan = self.model.kernel_plan
        return "-" if plan is None else "/".join(p.split(" ", 1)[1] for p in plan.per_bucket().split(", "))

    def logits(self, n: int = 4) -> np.ndarray:
        self._threads(1)
        return np.array(self.model.forward(self.ids[:n], 0), np.float32)

    def _step(self, tok, pos):
        return self.model.step(int(tok), pos)

    def measure(self, kind: str, n: int, threads: int) -> dict:
        """kind 'pp': one n-token prefill; 'tg': n decode steps. -> seconds, peak RSS."""
        self._threads(threads)
        if kind == "pp":  # warm-up: pages the weights in, makes the prefill buffers, wakes the pool
            self.model.forward(self.ids[:2], 0, last_only=True)
        else:
            self._step(self.ids[0], 0)
        peak_rss_reset()
        if kind == "pp":
            t0 = time.perf_counter()
            self.model.forward(self.ids[:n], 0, last_only=True)
            dt = time.perf_counter() - t0
        else:
            step, ids = self._step, self.ids
            t0 = time.perf_counter()
            for pos in range(n):
                step(ids[pos], pos)
            dt = time.perf_counter() - t0
        return {"seconds": dt, "peak_rss": peak_rss_bytes(), "kernels": self.kernels()}

    def kernel_time(self, n: int, threads: int) -> dict:
        """Python overhead of n decode steps run with every kernel call timed.

        Per step: wall time W, time inside kernel calls K, calls C; the timer's own cost outside
        its window, c per call, is calibrated on a no-op first. overhead = (W - K - C*c) / (W - C*c);
        the median over the steps resists a noisy neighbour hitting one step."""
        self._threads(threads)
        self._step(self.ids[0], 0)
        clock = time.perf_counter
        with KernelTimer() as kt:
            timed_noop = kt._wrap(lambda *a, **k: None)
            t0 = clock()
            for _ in range(2000):
                timed_noop()
            c = max(0.0, ((clock() - t0) - kt.seconds) / 2000)
            kt.seconds, kt.calls = 0.0, 0
            fractions, walls, kerns, calls = [], [], [], []
            for pos in range(n):
                k0, n0, t0 = kt.seconds, kt.calls, clock()
                self._step(self.ids[pos], pos)
                w = clock() - t0
                k, ncalls = kt.seconds - k0, kt.calls - n0
                w_plain = max(w - ncalls * c, 1e-12)
                fractions.append(max(0.0, (w_plain - k) / w_plain))
                walls.append(w_plain)
                kerns.append(k)
                calls.append(ncalls)
        return {"overhead": float(np.median(fractions)), "calls_per_step": float(np.median(calls)),
                "kernel_s_per_step": float(np.median(kerns)), "step_s": float(np.median(walls)),
                "timer_cost_s_per_call": c}


def _worker_stdio() -> None:
    """Worker process main: pickled (method, args) requests on stdin, ("ok"|"err", value) on
    the original stdout; anything the engine prints goes to stderr."""
    import pickle
    rx = os.fdopen(os.dup(0), "rb")
    tx = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(status, value):
        pickle.dump((status, value), tx, protocol=pickle.HIGHEST_PROTOCOL)
        tx.flush()

    try:
        path, ctx = pickle.load(rx)
        runner = Runner(path, ctx)
        send("ok", None)
    except BaseException as e:  # noqa: BLE001  (reported to the parent)
        send("err", _one_line(e))
        return
    while True:
        try:
            msg = pickle.load(rx)
        except EOFError:
            return
        if msg is None:
            return
        method, args = msg
        try:
            send("ok", getattr(runner, method)(*args))
        except BaseException as e:  # noqa: BLE001
            send("err", _one_line(e) if isinstance(e, BenchError) else traceback.format_exc())


def _one_line(e: BaseException) -> str:
    return str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"


class Worker:
    """Parent-side handle of a Runner in its own Python process (a fresh interpreter: the
    parent's kernel thread pool is never forked, and peak RSS is the model's own)."""

    def __init__(self, path: str, ctx: int, kernel: str | None = None):
        import pickle
        import engine
        self._pickle = pickle
        env = dict(os.environ)
        if kernel is not None:
            env["TERNARY_KERNEL"] = kernel
        root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + [x for x in [env.get("PYTHONPATH")] if x])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from ternary_bench.bench import _worker_stdio; _worker_stdio()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._send((path, ctx))
        self.opened = False

    def _send(self, msg):
        try:
            self._pickle.dump(msg, self.proc.stdin, protocol=self._pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise BenchError(f"benchmark worker died (exit code {self.proc.poll()})") from None

    def wait_open(self):
        """Block until the model is open in the worker (workers start in parallel)."""
        if not self.opened:
            self._result()
            self.opened = True

    def _result(self):
        try:
            status, value = self._pickle.load(self.proc.stdout)
        except EOFError:
            raise BenchError(f"benchmark worker died (exit code {self.proc.wait()})") from None
        if status != "ok":
            raise BenchError(value.strip())
        return value

    def call(self, method: str, *args):
        self.wait_open()
        self._send((method, args))
        return self._result()

    def close(self):
        try:
            self._send(None)
            self.proc.stdin.close()
        except (BenchError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# llama.cpp comparison


_GGUF_NAMES = {"attn.q": "attn_q", "attn.k": "attn_k", "attn.v": "attn_v", "attn.o": "attn_output",
               "attn.sub_norm": "attn_sub_norm", "attn_norm": "attn_norm", "ffn_norm": "ffn_norm",
               "mlp.gate": "ffn_gate", "mlp.up": "ffn_up", "mlp.down": "ffn_down",
               "mlp.sub_norm": "ffn_sub_norm"}


def gguf_name(name: str) -> str | None:
    """.tpk tensor name -> llama.cpp GGUF name (None: not in the GGUF)."""
    if name == "embed":
        return "token_embd.weight"
    if name == "norm":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    if name.startswith("layers."):
        _, i, rest = name.split(".", 2)
        rest = rest.removesuffix(".weight")
        if rest in _GGUF_NAMES:
            return f"blk.{i}.{_GGUF_NAMES[rest]}.weight"
    return None


def write_gguf(tpk_path: str, out: str) -> str:
    """Write an f16 .tpk as an F16 GGUF for llama.cpp, streaming one tensor at a time.

    The vocabulary is a placeholder SentencePiece one (llama-bench feeds random token ids):
    <unk>, <s>, </s>, 256 byte tokens, then "▁t{i}" up to vocab_size.
    """
    import gguf

    from engine.formats import tpk
    m = tpk.read(tpk_path)
    c, t = m.config, m.tensors
    if c["weight_format"] != "f16" or c["lm_head_format"] != "f16":
        raise BenchError(f"{tpk_path}: GGUF export needs the f16 model")
    arch = "bitnet" if c["tie_word_embeddings"] and "lm_head.weight" not in t else "llama"
    if c.get("sub_norms") and arch == "llama":
        skip = {f"layers.{i}.{s}" for i in range(c["num_layers"]) for s in ("attn.sub_norm", "mlp.sub_norm")}
    else:
        skip = set()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".partial"
    w = gguf.GGUFWriter(tmp, arch)
    w.add_context_length(c["max_position"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_heads"])
    w.add_head_count_kv(c["num_kv_heads"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(float(c["rope_theta"]))
    w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    vocab = c["vocab_size"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(len(tokens), vocab)]
    tokens = tokens[:vocab]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 3 + [-float(i) for i in range(3, vocab)])
    w.add_token_types(types[:vocab])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    order = []
    for name, arr in t.items():
        g = gguf_name(name)
        if g is None or name in skip:
            continue
        order.append((g, arr))
        w.add_tensor_info(g, arr.shape, arr.dtype, arr.nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, arr in order:
        w.write_tensor_data(np.ascontiguousarray(arr))
    w.close()
    os.replace(tmp, out)
    return out


def _gguf_tensors(path: str) -> list[tuple[str, int, int, int]]:
    """[(name, n_dims, n_elements, n_bytes)] of a GGUF's tensors. The sizes come from the data
    offsets (each tensor runs to the next one's start), so that types the gguf package does not
    know (ik_llama.cpp's IQ2_BN ...) are measured too."""
    import gguf

    class TensorInfoOnly(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            self.tensor_info = (start_offs, fields)

    r = TensorInfoOnly(path)
    start, fields = r.tensor_info
    info = []
    for f in fields:
        _, name, _, dims, _, offset = f.parts
        info.append((int(offset[0]), str(bytes(name), encoding="utf-8"), len(dims), int(np.prod(dims))))
    info.sort()
    ends = [o for o, *_ in info[1:]] + [os.path.getsize(path) - start]
    return [(name, nd, n, end - off) for (off, name, nd, n), end in zip(info, ends)]


def gguf_bytes_per_token(path: str) -> tuple[int, int, float]:
    """(bytes a decode step reads, file bytes, bits per linear weight) of a GGUF."""
    by = {name: (nd, n, nb) for name, nd, n, nb in _gguf_tensors(path)}
    lin = [v for name, v in by.items() if name.startswith("blk.") and v[1] > 1 and v[0] == 2]
    lin_bytes = sum(nb for _, _, nb in lin)
    n_weights = sum(n for _, n, _ in lin)
    head = by.get("output.weight") or by["token_embd.weight"]
    return lin_bytes + head[2], os.path.getsize(path), 8.0 * lin_bytes / n_weights


# peer engines built from source: {name: (cache file prefix, ternary quant types for its
# llama-quantize)}. ik_llama.cpp's IQ2_BN is 2 bits/weight (its fastest), IQ1_BN 1.625 (its
# smallest); both work on the llama.cpp "bitnet" graph of our F16 GGUF.
PEERS = {"llama.cpp": ("", ("TQ2_0", "TQ1_0")), "ik_llama.cpp": ("ik-", ("IQ2_BN", "IQ1_BN"))}


def llama_cpp_models(f16_tpk: str, quantize: str, label: str, peer: str = "llama.cpp") -> dict:
    """{format label: GGUF path}: F16 from the .tpk, the peer's ternary types by its llama-quantize
    (cached; "llama.cpp F16" is the F16 file itself)."""
    from ternary_bench import synthetic
    root = os.path.join(os.path.dirname(synthetic.cache_dir()), "gguf")
    base = os.path.join(root, f"{label}-f16.gguf")
    if not os.path.exists(base) or os.path.getmtime(base) < os.path.getmtime(f16_tpk):
        write_gguf(f16_tpk, base)
    out = {f"{peer} F16": base}
    prefix, types = PEERS[peer]
    for q in types:
        path = os.path.join(root, f"{label}-{prefix}{q.lower()}.gguf")
        if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(base):
            r = subprocess.run([quantize, base, path + ".partial", q], capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
                raise BenchError(f"{peer} llama-quantize {q} failed: {tail[0]}")
            os.replace(path + ".partial", path)
        out[f"{peer} {q}"] = path
    return out


def run_llama_bench(binary: str, gguf_path: str, threads: int, pp: list[int], tg: int) -> dict:
    """One llama-bench run (-r 1) -> {"pp{N}": tok/s, "tg{N}": tok/s}."""
    cmd = [binary, "-m", gguf_path, "-t", str(threads), "-p", ",".join(map(str, pp)),
           "-n", str(tg), "-r", "1", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
        raise BenchError(f"llama-bench failed on {os.path.basename(gguf_path)}: {tail[0]}")
    out = {}
    for rec in json.loads(r.stdout):
        if rec.get("n_gen", 0) > 0 and rec.get("n_prompt", 0) == 0:
            out[f"tg{rec['n_gen']}"] = float(rec["avg_ts"])
        elif rec.get("n_prompt", 0) > 0 and rec.get("n_gen", 0) == 0:
            out[f"pp{rec['n_prompt']}"] = float(rec["avg_ts"])
    return out


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Variant:
    label: str                 # "t2", "t2/i8", "f16", "llama.cpp TQ2_0"
    path: str
    engine: str = "ours"       # "ours" | "llama.cpp" (any llama-bench peer)
    bench_binary: str | None = None  # the peer's llama-bench
    info: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    samples: dict = field(default_factory=dict)    # (threads, test) -> [tok/s]
    rss: dict = field(default_factory=dict)        # threads -> peak bytes
    overhead: list = field(default_factory=list)   # per repetition: dict
    dram_before_tg: dict = field(default_factory=dict)  # threads -> [GB/s sampled just before each tg run]
    kernel: str | None = None  # TERNARY_KERNEL of its worker (engine/runtime/kernel_choice.py)
    kernels: dict = field(default_factory=dict)    # threads -> layouts chosen per M bucket


@dataclass
class ModelRun:
    name: str
    variants: list
    dram: dict = field(default_factory=dict)       # threads -> [GB/s]


HEAD_TAGS = {"f16": "", "int8": "i8", "q4": "q4"}  # lm_head format -> label suffix ("t2/q4")


def _variant_label(fmt: str, head: str) -> str:
    return fmt if head == "f16" or fmt == "f16" else f"{fmt}/{HEAD_TAGS[head]}"


def resolve_models(args) -> list[tuple[str, str, str]]:
    """[(label, weight format, lm_head format)] of every model variant asked for."""
    formats = _split(args.formats, str)
    heads = _split(args.lm_head, str)
    for f in formats:
        if f not in tpk.WEIGHT_FORMATS:
            raise BenchError(f"unknown format {f!r} (expected {', '.join(tpk.WEIGHT_FORMATS)})")
    for h in heads:
        if h not in HEAD_TAGS:
            raise BenchError(f"unknown --lm-head {h!r} (expected {', '.join(HEAD_TAGS)})")
    combos = []
    for f in formats:
        for h in (heads if f != "f16" else ["f16"]):
            if (f, h) not in combos:
                combos.append((f, h))
    return [(_variant_label(f, h), f, h) for f, h in combos]


def _split(s: str, kind):
    try:
        return [kind(x) for x in str(s).split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"bad list {s!r}") from None


def kernel_choices(text: str | None) -> list[str] | None:
    """--kernel's list (';' between entries when one holds a bucket=layout list, else ',')."""
    if text is None:
        return None
    from engine.runtime import kernel_choice
    parts = [x.strip() for x in text.split(";" if "=" in text else ",") if x.strip()]
    for x in parts:
        try:
            kernel_choice.parse_forced(x)
        except kernel_choice.KernelChoiceError as e:
            raise BenchError(f"--kernel: {e}") from None
    if not parts:
        raise BenchError("--kernel needs at least one choice")
    return parts


def with_kernels(variants: list, kernels: list[str] | None) -> list:
    """One variant per kernel choice for each ternary variant (f16 runs once)."""
    if kernels is None:
        return variants
    out = []
    for v in variants:
        if v.label == "f16":
            out.append(v)
            continue
        out += [Variant(f"{v.label} k={k}", v.path, kernel=k) for k in kernels]
    return out


def prepare(args, say) -> list[ModelRun]:
    runs = _prepare(args, say)
    kernels = kernel_choices(args.kernel)
    for mr in runs:
        mr.variants = with_kernels(mr.variants, kernels)
    return runs


def _prepare(args, say) -> list[ModelRun]:
    from ternary_bench import synthetic
    from engine.formats import tpk
    combos = resolve_models(args)
    runs = []
    if args.model:
        path = args.model
        if path == "default":
            from engine import DEFAULT_MODEL
            path = str(DEFAULT_MODEL)
            if not os.path.exists(path):
                raise BenchError(f"the embedded default model is not in this install ({path})")
        if not os.path.exists(path):
            raise BenchError(f"{path}: no such file")
        try:
            tpk.read(path)
        except tpk.TpkError as e:
            raise BenchError(str(e)) from None
        name = os.path.splitext(os.path.basename(path))[0]
        variants = []
        for label, f, h in combos:
            say(f"{name}: {label} model")
            variants.append(Variant(label, synthetic.variant(path, f, h)))
        runs.append(ModelRun(name, variants))
        return runs
    for shape in _split(args.shape, str):
        if shape not in synthetic.SHAPES:
            raise BenchError(f"unknown shape {shape!r} (known: {', '.join(synthetic.SHAPES)})")
        targets = [(f, h) for _, f, h in combos]
        say(f"synthetic {shape}: making or finding {len(targets)} files in {synthetic.cache_dir()}")
        paths = synthetic.ensure_all(shape, targets, args.seed)
        runs.append(ModelRun(shape, [Variant(label, p) for (label, _, _), p in zip(combos, paths)]))
    return runs


def _progress(total: int):
    try:
        from tqdm import tqdm
        # disable=None: no bar when stderr is not a terminal (logs, CI)
        return tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)
    except ImportError:  # pragma: no cover
        return None


def run_model(mr: ModelRun, args, threads_list, pp_list, tg, bar, say) -> None:
    from engine import _kernels
    ctx = max(pp_list + [tg, 8])
    ours = [v for v in mr.variants if v.engine == "ours"]
    workers = {}
    try:
        for v in ours:
            workers[v.label] = Worker(v.path, ctx, v.kernel)
        for v in ours:
            if bar is not None:
                bar.set_description(f"{mr.name} {v.label}: open + validate")
            workers[v.label].wait_open()
            v.info = workers[v.label].call("info")
            v.validation = workers[v.label].call("validate", max(pp_list, default=VALIDATE_GEMM_M),
                                                    max(threads_list))
        _check_model_logits(mr, workers)
        llama = [v for v in mr.variants if v.engine == "llama.cpp"]
        for rep in range(args.reps):
            for threads in threads_list:
                if bar is not None:
                    bar.set_description(f"{mr.name} rep {rep + 1}/{args.reps} t={threads}: DRAM")
                mr.dram.setdefault(threads, []).append(_kernels.stream_read_gbps(args.dram_mb << 20, threads, 5))
                order = ours[rep % len(ours):] + ours[:rep % len(ours)]
                for v in order:
                    w = workers[v.label]
                    for kind, n in [("pp", p) for p in pp_list] + ([("tg", tg)] if tg else []):
                        if bar is not None:
                            bar.set_description(f"{mr.name} rep {rep + 1}/{args.reps} t={threads} {v.label} {kind}{n}")
                        if kind == "tg":  # pairs each decode run with the bandwidth just before it
                            d = _kernels.stream_read_gbps(args.dram_mb << 20, threads, 3)
                            v.dram_before_tg.setdefault(threads, []).append(d)
                            mr.dram[threads].append(d)
                        r = w.call("measure", kind, n, threads)
                        v.samples.setdefault((threads, f"{kind}{n}"), []).append(n / r["seconds"])
                        v.rss[threads] = max(v.rss.get(threads, 0), r["peak_rss"])
                        v.kernels[threads] = r["kernels"]
                        if bar is not None:
                            bar.update()
                    if threads == max(threads_list) and tg:
                        v.overhead.append(w.call("kernel_time", min(OVERHEAD_STEPS, tg), threads))
                mr.dram[threads].append(_kernels.stream_read_gbps(args.dram_mb << 20, threads, 5))
                for v in llama:
                    if bar is not None:
                        bar.set_description(f"{mr.name} rep {rep + 1}/{args.reps} t={threads} {v.label}")
                    res = run_llama_bench(v.bench_binary, v.path, threads, pp_list, tg)
                    for test, tps in res.items():
                        v.samples.setdefault((threads, test), []).append(tps)
                    if bar is not None:
                        bar.update(len(pp_list) + (1 if tg else 0))
    finally:
        for w in workers.values():
            w.close()


def _check_model_logits(mr: ModelRun, workers: dict) -> None:
    """Every ternary layout and kernel choice must give the logits of the first ternary variant
    with the same head exactly; f16's relative difference is recorded."""
    logits = {label: w.call("logits") for label, w in workers.items()}
    ours = [v for v in mr.variants if v.engine == "ours"]
    for v in ours:
        if v.info["weight_format"] == "f16":
            continue
        ref = next((u.label for u in ours if u.info["weight_format"] != "f16"
                    and u.info["lm_head_format"] == v.info["lm_head_format"]), None)
        if ref is None or ref == v.label:
            continue
        if not np.array_equal(logits[v.label], logits[ref]):
            d = float(np.abs(logits[v.label] - logits[ref]).max())
            raise BenchError(f"{mr.name}: {v.label} logits differ from {ref} (max |diff| {d:.3g}); "
                             "the same ternary weights must give identical logits")
        v.validation["logits_equal_to"] = ref
    base = logits.get("f16")
    if base is not None:
        for label, lg in logits.items():
            if label != "f16":
                rel = float(np.abs(lg - base).max() / max(float(np.abs(base).max()), 1e-30))
                next(v for v in mr.variants if v.label == label).validation["f16_logits_rel_diff"] = rel


def _median(xs):
    return float(np.median(xs)) if xs else None


def build_rows(mr: ModelRun, threads_list, pp_list, tg) -> list[dict]:
    rows = []
    tg_key = f"tg{tg}" if tg else None
    f16 = next((v for v in mr.variants if v.engine == "ours" and v.label == "f16"), None)
    for v in mr.variants:
        for threads in threads_list:
            if not any(k[0] == threads for k in v.samples):
                continue
            best = max(mr.dram.get(threads, []), default=None)
            row = dict(model=mr.name, engine=v.engine, format=v.label, threads=threads,
                       isa=v.validation.get("isa"), validated=bool(v.validation) if v.engine == "ours" else None,
                       kernel=v.kernel, kernels=v.kernels.get(threads))
            row.update(weight_format=v.info.get("weight_format"), lm_head=v.info.get("lm_head_format"),
                       bits_per_weight=v.info.get("bits_per_weight"),
                       file_mb=v.info.get("file_bytes", 0) / 1e6,
                       weights_mb_per_token=v.info.get("bytes_per_token", 0) / 1e6)
            for p in pp_list:
                row[f"pp{p}_tps"] = _median(v.samples.get((threads, f"pp{p}"), []))
                row[f"pp{p}_samples"] = v.samples.get((threads, f"pp{p}"), [])
            if tg_key:
                tps = _median(v.samples.get((threads, tg_key), []))
                row[f"{tg_key}_tps"] = tps
                row[f"{tg_key}_samples"] = v.samples.get((threads, tg_key), [])
                per_token = v.info.get("bytes_per_token", 0)
                gbps = tps * per_token / 1e9 if tps else None
                row["gbps"] = gbps
                tgs, paired = v.samples.get((threads, tg_key), []), v.dram_before_tg.get(threads, [])
                if paired and len(paired) == len(tgs):
                    row["dram_gbps"] = _median(paired)
                    row["pct_dram"] = _median([100.0 * t * per_token / 1e9 / d for t, d in zip(tgs, paired)])
                else:  # llama.cpp rows: the bandwidth samples of the run at these threads
                    row["dram_gbps"] = _median(mr.dram.get(threads, []))
                    row["pct_dram"] = 100.0 * gbps / row["dram_gbps"] if gbps and row["dram_gbps"] else None
                row["dram_gbps_before_tg"] = paired
                row["dram_gbps_best"] = best
                row["pct_dram_best"] = 100.0 * gbps / best if gbps and best else None
                row["dram_gbps_samples"] = mr.dram.get(threads, [])
                if f16 is not None and (threads, tg_key) in f16.samples:
                    row["speedup_tg"] = tps / _median(f16.samples[(threads, tg_key)])
            if f16 is not None:
                for p in pp_list:
                    if (threads, f"pp{p}") in f16.samples and row[f"pp{p}_tps"]:
                        row[f"speedup_pp{p}"] = row[f"pp{p}_tps"] / _median(f16.samples[(threads, f"pp{p}")])
            row["peak_rss_mb"] = v.rss[threads] / 1e6 if threads in v.rss else None
            if v.overhead and threads == max(threads_list):
                row["python_overhead"] = _median([o["overhead"] for o in v.overhead])
                row["kernel_calls_per_step"] = v.overhead[-1]["calls_per_step"]
            if v.engine == "ours":
                row["open_s"] = v.info.get("open_s")
                row["kv_cache_mb"] = v.info.get("kv_bytes", 0) / 1e6
            row["validation"] = v.validation
            rows.append(row)
    return rows


def _fmt(x, spec="{:.1f}", none="-"):
    return none if x is None else spec.format(x)


def _mb(x):
    return "-" if x is None else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def table(rows: list[dict], pp_list, tg) -> str:
    cols = [("model", lambda r: r["model"]), ("format", lambda r: r["format"]),
            ("bits/w", lambda r: _fmt(r["bits_per_weight"], "{:.2f}")),
            ("file MB", lambda r: _mb(r["file_mb"])),
            ("thr", lambda r: str(r["threads"])),
            ("kernels gemv/few/gemm", lambda r: r.get("kernels") or "-")]
    cols += [(f"pp{p} tok/s", lambda r, p=p: _fmt(r.get(f"pp{p}_tps"))) for p in pp_list]
    if tg:
        cols += [(f"tg{tg} tok/s", lambda r: _fmt(r.get(f"tg{tg}_tps"), "{:.2f}")),
                 ("MB/tok", lambda r: _mb(r["weights_mb_per_token"])),
                 ("GB/s", lambda r: _fmt(r.get("gbps"))),
                 ("%DRAM", lambda r: _fmt(r.get("pct_dram"), "{:.0f}%")),
                 ("x fp16 tg", lambda r: _fmt(r.get("speedup_tg"), "{:.2f}x"))]
    if pp_list:
        p = max(pp_list)
        cols += [(f"x fp16 pp{p}", lambda r: _fmt(r.get(f"speedup_pp{p}"), "{:.2f}x"))]
    cols += [("peak RSS MB", lambda r: _fmt(r.get("peak_rss_mb"), "{:.0f}")),
             ("py ovh", lambda r: _fmt(100 * r["python_overhead"] if r.get("python_overhead") is not None
                                       else None, "{:.1f}%"))]
    cells = [[h for h, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        lines.append("| " + " | ".join(s.ljust(w) if i < 2 else s.rjust(w)
                                       for i, (s, w) in enumerate(zip(c, widths))) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":"
                                        for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def targets(rows: list[dict], tg) -> list[str]:
    """Issues 7 and 15's targets, for the models of this run that they concern."""
    out = []
    if not tg:
        return out
    key = f"tg{tg}_tps"
    by_model = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    for model, rs in by_model.items():
        top = max(r["threads"] for r in rs)
        at = [r for r in rs if r["threads"] == top and r["engine"] == "ours" and r.get(key)]
        tern = [r for r in at if r["weight_format"] in tpk.TERNARY_FORMATS]
        if model == "bitnet-2b" and tern:
            best = max(tern, key=lambda r: r.get("speedup_tg") or 0)
            if best.get("speedup_tg"):
                out.append(_target(f"{model}: ternary decode >= 5x fp16 (best {best['format']})",
                                   best["speedup_tg"], 5.0, "{:.2f}x"))
            for r in tern:
                if r["weight_format"] == "t2" and r.get("pct_dram"):
                    out.append(_target(f"{model}: {r['format']} decode >= 80% of DRAM bandwidth",
                                       r["pct_dram"], 80.0, "{:.0f}%"))
            for r in at:
                if r.get("python_overhead") is not None:
                    out.append(_target(f"{model}: {r['format']} Python overhead <= 5% of a decode step",
                                       -100 * r["python_overhead"], -5.0, "{:.1f}%", neg=True))
        tq2 = next((r for r in rs if r["threads"] == top and r["format"] == "llama.cpp TQ2_0"), None)
        if tq2 is not None and tern:
            best_tg = max(tern, key=lambda r: r.get(key) or 0)
            if tq2.get(key):
                out.append(_target(f"{model}: decode >= 2x llama.cpp TQ2_0 (goal beyond; {best_tg['format']})",
                                   best_tg[key] / tq2[key], 2.0, "{:.2f}x"))
            pk = next((f"pp{p}_tps" for p in sorted(_pp_of(rs), reverse=True) if tq2.get(f"pp{p}_tps")), None)
            if pk:
                best_pp = max(tern, key=lambda r: r.get(pk) or 0)
                out.append(_target(f"{model}: {pk[:-4]} >= 3x llama.cpp TQ2_0 (goal beyond; {best_pp['format']})",
                                   best_pp[pk] / tq2[pk], 3.0, "{:.2f}x"))
        ik = [r for r in rs if r["threads"] == top and r["format"].startswith("ik_llama.cpp")
              and not r["format"].endswith("F16")]
        for k in [f"pp{p}_tps" for p in _pp_of(rs)] + [key]:
            peer = max(ik, key=lambda r: r.get(k) or 0, default=None)
            if tern and peer is not None and peer.get(k):  # issue 15: beat its best ternary type
                mine = max(tern, key=lambda r: r.get(k) or 0)
                out.append(_target(f"{model}: {k[:-4]} >= ik_llama.cpp's best ({peer['format']}; {mine['format']})",
                                   mine[k] / peer[k], 1.0, "{:.2f}x"))
        if model == "default":
            for r in at:
                out.append(_target(f"default model: {r['format']} decode >= 1000 tok/s", r[key], 1000.0, "{:.0f}"))
    return out


def _pp_of(rows) -> list[int]:
    return sorted({int(k[2:-4]) for r in rows for k in r if k.startswith("pp") and k.endswith("_tps")})


def _target(what, value, goal, spec, neg=False):
    ok = value >= goal
    shown = spec.format(-value if neg else value)
    return f"{'MET ' if ok else 'MISS'}  {what}: {shown}"


def plot(rows: list[dict], path: str, pp_list, tg) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    tests = ([f"tg{tg}"] if tg else []) + [f"pp{max(pp_list)}"] if pp_list else ([f"tg{tg}"] if tg else [])
    ncols = len(tests) + 1
    fig, axes = plt.subplots(len(models), ncols, figsize=(4.2 * ncols, 3.2 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        rs = [r for r in rows if r["model"] == model]
        fmts = list(dict.fromkeys(r["format"] for r in rs))
        for j, test in enumerate(tests):
            ax = axes[i][j]
            for f in fmts:
                pts = sorted((r["threads"], r.get(f"{test}_tps")) for r in rs if r["format"] == f and r.get(f"{test}_tps"))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f, linestyle="--" if f.startswith("llama") else "-")
            ax.set_title(f"{model}: {test}", fontsize=9)
            ax.set_xlabel("threads", fontsize=8)
            ax.set_ylabel("tok/s", fontsize=8)
            ax.set_ylim(bottom=0)
            ax.set_xticks(sorted({r["threads"] for r in rs}))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.legend(fontsize=7)
        ax = axes[i][-1]
        top = max(r["threads"] for r in rs)
        bars = [(r["format"], r.get("speedup_tg"), r.get(f"speedup_pp{max(pp_list)}") if pp_list else None)
                for r in rs if r["threads"] == top and r["format"] != "f16" and
                (r.get("speedup_tg") or (pp_list and r.get(f"speedup_pp{max(pp_list)}")))]
        x = np.arange(len(bars))
        c = ax.bar(x - 0.2, [b[1] or 0 for b in bars], 0.4, label=f"tg{tg}" if tg else "tg")
        ax.bar_label(c, fmt="%.1f", fontsize=6)
        if pp_list:
            c = ax.bar(x + 0.2, [b[2] or 0 for b in bars], 0.4, label=f"pp{max(pp_list)}")
            ax.bar_label(c, fmt="%.1f", fontsize=6)
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xticks(x, [b[0] for b in bars], fontsize=7, rotation=20)
        ax.set_title(f"{model}: speed-up vs fp16, {top} threads", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="ternary-bench",
        description="Tokens/s of ternary (T2, T1) vs fp16 of the same model, validated first, "
                    "next to the measured DRAM bandwidth. Without a model file: synthetic models "
                    "at published shapes (cached in ~/.cache/ternary-engine).")
    p.add_argument("model", nargs="?", help=".tpk file, or 'default' for the embedded model "
                   "(its other formats are made and cached)")
    p.add_argument("--shape", default="bitnet-2b",
                   help="synthetic shape(s) when no model is given, comma-separated: "
                        "tiny, bitnet-700m, bitnet-2b, llama3-8b (default: bitnet-2b)")
    p.add_argument("--formats", default="t2,t1,f16", help="weight formats (default: t2,t1,f16)")
    p.add_argument("--lm-head", default="f16,q4",
                   help="lm_head format(s) of the ternary models, f16, int8 and/or q4 (default: "
                        "f16,q4: the model as converted by default, and with the 4-bit head that "
                        "gives the smallest decode step; the f16 model always keeps an f16 head)")
    p.add_argument("--threads", default=None, help="thread counts (default: 1..physical cores)")
    p.add_argument("--pp", default="128,512", help="prefill lengths (default: 128,512; '' for none)")
    p.add_argument("--tg", type=int, default=128, help="decode steps (default: 128; 0 for none)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, formats alternating (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="synthetic weights' seed")
    p.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG plot")
    p.add_argument("--llama-bench", metavar="PATH", help="llama.cpp llama-bench binary: add its "
                   "TQ2_0 / TQ1_0 / F16 rows on the same model (needs llama-quantize)")
    p.add_argument("--llama-quantize", metavar="PATH",
                   help="llama-quantize binary (default: next to llama-bench, then PATH)")
    p.add_argument("--ik-llama-bench", metavar="PATH", help="ik_llama.cpp's llama-bench (its "
                   "llama-quantize next to it): add its IQ2_BN / IQ1_BN / F16 rows")
    p.add_argument("--dram-mb", type=int, default=DRAM_MB,
                   help=f"buffer of the DRAM bandwidth loop, MB (default {DRAM_MB}; keep it >> L3)")
    p.add_argument("--kernel", default=None,
                   help="kernel choices to compare, comma-separated TERNARY_KERNEL values (auto, "
                        "t2, t1, tl1, tl2; ';' separates bucket=layout forms, e.g. "
                        "'auto;gemv=tl2,gemm=t2'): each ternary model runs once per choice "
                        "(label 'FORMAT k=CHOICE'); default: the environment's choice, one run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    return p.parse_args(argv)


def default_threads() -> list[int]:
    from engine import kernels
    n = max(1, kernels.physical_cores())
    if n <= 4:
        return list(range(1, n + 1))
    ts, t = [], 1
    while t < n:
        ts.append(t)
        t *= 2
    return ts + [n]


def _peer_binaries(args) -> dict:
    """{peer: (llama-bench, llama-quantize)} from --llama-bench / --ik-llama-bench; the quantizer
    is the one next to its llama-bench (or --llama-quantize for llama.cpp, then PATH)."""
    out = {}
    for peer, bench, quantize in (("llama.cpp", args.llama_bench, args.llama_quantize),
                                  ("ik_llama.cpp", args.ik_llama_bench, None)):
        if not bench:
            continue
        if not os.access(bench, os.X_OK):
            raise BenchError(f"{bench}: not an executable llama-bench")
        quantize = quantize or os.path.join(os.path.dirname(os.path.abspath(bench)), "llama-quantize")
        if not os.access(quantize, os.X_OK):
            quantize = shutil.which("llama-quantize") if peer == "llama.cpp" else None
        if not quantize:
            hint = ": pass --llama-quantize PATH" if peer == "llama.cpp" else f" next to {bench}"
            raise BenchError(f"{peer}'s llama-quantize not found{hint}")
        out[peer] = (bench, quantize)
    return out


def _add_peer_variants(runs: list, peer: str, bench: str, quantize: str, say) -> None:
    """Append the peer's rows (F16 only when our f16 row is there too) to every model run."""
    from ternary_bench import synthetic
    for mr in runs:
        f16 = next((v for v in mr.variants if v.label == "f16"), None)
        src = f16.path if f16 else synthetic.variant(mr.variants[0].path, "f16", "f16")
        say(f"{mr.name}: GGUF for {peer}")
        for label, path in llama_cpp_models(src, quantize, mr.name, peer).items():
            if label.endswith("F16") and f16 is None:
                continue
            v = Variant(label, path, engine="llama.cpp", bench_binary=bench)
            mpt, size, bpw = gguf_bytes_per_token(path)
            v.info = dict(bytes_per_token=mpt, file_bytes=size, bits_per_weight=bpw,
                          weight_format=label.split()[-1].lower(), lm_head_format=None)
            mr.variants.append(v)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except BenchError as e:
        print(f"ternary-bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _main(argv=None) -> int:
    args = parse_args(argv)
    from engine import kernels
    threads_list = _split(args.threads, int) if args.threads else default_threads()
    if not threads_list or min(threads_list) < 1:
        raise BenchError("--threads needs positive integers")
    pp_list = _split(args.pp, int)
    tg = args.tg
    if any(p < 2 for p in pp_list) or tg < 0 or (not pp_list and not tg) or args.reps < 1:
        raise BenchError("need --pp lengths >= 2 and/or --tg > 0, and --reps >= 1")
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    peers = _peer_binaries(args)
    runs = prepare(args, say)
    for peer, (bench, quantize) in peers.items():
        _add_peer_variants(runs, peer, bench, quantize, say)
    per_rep = sum(len(mr.variants) for mr in runs) * len(threads_list) * (len(pp_list) + (1 if tg else 0))
    bar = None if args.quiet else _progress(per_rep * args.reps)
    started = time.time()
    try:
        for mr in runs:
            run_model(mr, args, threads_list, pp_list, tg, bar, say)
    finally:
        if bar is not None:
            bar.close()
    rows = [r for mr in runs for r in build_rows(mr, threads_list, pp_list, tg)]
    head = (f"ternary-bench  {time.strftime('%Y-%m-%d %H:%M')}  CPU: {cpu_model()} "
            f"({os.cpu_count()} logical, {kernels.physical_cores()} physical), ISA {kernels.active_isa()}, "
            f"{args.reps} reps, medians")
    print(head)
    print(table(rows, pp_list, tg))
    for mr in runs:
        ds = ", ".join(f"{t} thr median {_median(v):.1f} GB/s ({min(v):.1f}..{max(v):.1f})"
                       for t, v in sorted(mr.dram.items()))
        print(f"DRAM read bandwidth ({mr.name} run, {sum(len(v) for v in mr.dram.values())} samples): {ds}")
    for mr in runs:
        parts = []
        for v in mr.variants:
            if v.overhead:
                o = v.overhead
                parts.append(f"{v.label} {100 * _median([x['overhead'] for x in o]):.1f}% of "
                             f"{1e3 * _median([x['step_s'] for x in o]):.2f} ms "
                             f"({_median([x['calls_per_step'] for x in o]):.0f} kernel calls)")
        if parts:
            print(f"Python overhead per decode step ({mr.name}, {max(threads_list)} threads): " + "; ".join(parts))
    for line in targets(rows, tg):
        print(line)
    if args.json:
        doc = dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), cpu=cpu_model(), isa=kernels.active_isa(),
                   logical_cpus=os.cpu_count(), physical_cores=kernels.physical_cores(),
                   reps=args.reps, seconds=time.time() - started, rows=rows)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=_json_default)
    if args.plot:
        plot(rows, args.plot, pp_list, tg)
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
