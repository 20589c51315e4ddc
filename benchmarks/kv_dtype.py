"""KV cache dtypes (f32 / f16 / int8, engine/runtime/kvcache.py): perplexity, memory, speed.

    python benchmarks/kv_dtype.py ppl   [--text FILE] [--tokens 2048]
    python benchmarks/kv_dtype.py speed [--shape bitnet-700m] [--pos 2000] [--steps 8] [--rounds 3]

ppl: the embedded default model (the only trained model at hand: real attention patterns, but
  trained on 256 positions) scores the first --tokens tokens of a held-out text (default: the
  training corpus's val split) twice: in windows of 256 (its trained length) and as one window
  of all --tokens (attention over 2k cached positions, RoPE past its trained length: a harder
  test of the cache, a worse absolute ppl). Per dtype: ppl, ratio to f32, KV bytes at that ctx.
speed: a synthetic BitNet shape (ternary_bench.synthetic, t2 with the q4 head; random weights,
  the real dims, so the real bytes per token), or --shape default (the embedded model), with
  its KV cache filled at positions 0 .. pos-1 with the same random keys/values for every dtype;
  then decode steps at positions pos .. pos+steps-1, the dtypes alternating inside every round
  (medians of rounds). Also the attention kernel alone at that
  context (one layer, decode) and the cost of storing one token's K/V (f16: numpy's
  conversion). Validated before timing: f16 / int8 attention against f32 within 1e-2 of the
  values' scale, and finite logits.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np

from engine import DEFAULT_MODEL, Engine
from engine import kernels as K
from engine.ppl import window_nll
from engine.runtime.kvcache import KV_DTYPES

DEFAULT_TEXT = Path.home() / ".cache" / "ternary-engine" / "corpus" / "val.txt"  # ternary_train.corpus


def run_ppl(text_path: str, n_tokens: int) -> None:
    text = Path(text_path).read_text(encoding="utf-8")
    probe = Engine(kv_dtype="f32")
    ids = probe.tokenizer.encode(text[: n_tokens * 8], add_bos=False)[:n_tokens]
    if len(ids) < n_tokens:
        raise SystemExit(f"{text_path}: only {len(ids)} tokens, need {n_tokens}")
    bos = probe.tokenizer.bos_id
    print(f"default model {probe.model.args.n_layers} layers, head_dim {probe.model.args.head_dim}; "
          f"{len(ids)} tokens of {Path(text_path).name}")
    for window in (256, n_tokens):
        ppl, kv = {}, {}
        for d in KV_DTYPES:
            eng = Engine(kv_dtype=d, ctx=window)
            nll, n = window_nll(eng, ids, window, bos)
            assert n == len(ids) and math.isfinite(nll)
            ppl[d], kv[d] = math.exp(nll), eng.model.cache.nbytes
        for d in KV_DTYPES:
            print(f"  window {window:5d}  {d:5s} ppl {ppl[d]:10.4f}  vs f32 {100 * (ppl[d] / ppl['f32'] - 1):+8.4f} %"
                  f"  KV {kv[d] / 2**20:7.2f} MiB ({kv[d] / kv['f32']:.3f}x)")


def fill(model, pos: int, seed: int = 0) -> None:
    """Positions 0 .. pos-1 of every layer: the same N(0, 1) keys and values for every dtype."""
    a = model.args
    for i in range(a.n_layers):
        r = np.random.default_rng([seed, i])
        for p0 in range(0, pos, 512):
            t = min(512, pos - p0)
            kv = r.standard_normal((2, t, a.n_kv_heads, a.head_dim), dtype=np.float32)
            model.cache.update(i, p0, kv[0], kv[1])


def attention_checks(models, pos: int) -> dict:
    """Per dtype: seconds of one decode attention call on layer 0 (median of 20), validated."""
    a = models["f32"].args
    q = np.random.default_rng(9).standard_normal((1, a.n_heads, a.head_dim), dtype=np.float32)
    out = np.empty_like(q)
    want = K.attention(q, models["f32"].cache.k[0], models["f32"].cache.v[0], pos)
    secs = {}
    for d, m in models.items():
        m.cache.attend(0, q, pos, out)
        err = np.abs(out - want).max()
        assert err <= 1e-2, (d, err)   # values are N(0, 1): 1e-2 of their scale
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            m.cache.attend(0, q, pos, out)
            times.append(time.perf_counter() - t0)
        secs[d] = statistics.median(times)
    return secs


def store_cost(models, pos: int) -> dict:
    """Per dtype: seconds to store one token's K and V of one layer (median of 200)."""
    a = models["f32"].args
    kv = np.random.default_rng(3).standard_normal((2, 1, a.n_kv_heads, a.head_dim), dtype=np.float32)
    secs = {}
    for d, m in models.items():
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            m.cache.update(0, pos, kv[0], kv[1])
            times.append(time.perf_counter() - t0)
        secs[d] = statistics.median(times)
    return secs


def run_speed(shape: str, pos: int, steps: int, rounds: int) -> None:
    from engine.formats import tpk
    from engine.runtime.model import Model
    from ternary_bench import synthetic

    path = DEFAULT_MODEL if shape == "default" else synthetic.ensure(shape, "t2", lm_head="q4")
    t = tpk.read(path)   # one mapping, shared by the three models
    ctx = pos + steps
    models = {d: Model(t, ctx=ctx, kv_dtype=d) for d in KV_DTYPES}
    a = models["f32"].args
    for m in models.values():
        fill(m, pos)
        assert np.isfinite(m.step(1, pos)).all()
    print(f"{shape} ({a.weight_format}): {a.n_layers} layers, {a.n_heads}/{a.n_kv_heads} heads, head_dim "
          f"{a.head_dim}; decode at positions {pos}..{ctx - 1}; {K.threads()} threads, ISA {K.active_isa()}")
    att, store = attention_checks(models, pos), store_cost(models, pos)
    tps = {d: [] for d in KV_DTYPES}
    for _ in range(rounds):
        for d, m in models.items():
            t0 = time.perf_counter()
            for s in range(steps):
                m.step(1 + s, pos + s)
            tps[d].append(steps / (time.perf_counter() - t0))
    f32_kv = models["f32"].cache.nbytes
    for d, m in models.items():
        layer_bytes = (m.cache.nbytes / a.n_layers) * pos / ctx
        med = statistics.median(tps[d])
        print(f"  {d:5s} KV {m.cache.nbytes / 2**20:8.1f} MiB ({m.cache.nbytes / f32_kv:.3f}x) | "
              f"attention 1 layer {att[d] * 1e6:8.1f} us ({layer_bytes / att[d] / 1e9:5.1f} GB/s, "
              f"{att['f32'] / att[d]:.2f}x f32) | store 1 token {store[d] * 1e6:5.1f} us | "
              f"decode {med:6.2f} tok/s ({med / statistics.median(tps['f32']):.2f}x f32; "
              f"rounds {', '.join(f'{x:.2f}' for x in tps[d])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("ppl")
    p.add_argument("--text", default=str(DEFAULT_TEXT))
    p.add_argument("--tokens", type=int, default=2048)
    s = sub.add_parser("speed")
    s.add_argument("--shape", default="bitnet-700m")
    s.add_argument("--pos", type=int, default=2000)
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.part == "ppl":
        run_ppl(args.text, args.tokens)
    else:
        run_speed(args.shape, args.pos, args.steps, args.rounds)


if __name__ == "__main__":
    main()
