"""ternary-bench and the synthetic models it runs (ternary_bench/bench.py, ternary_bench/synthetic.py).

The tiny synthetic shape goes through the whole benchmark (workers, validation against the
reference ISA, timing, table, JSON, plot) with short prefill/decode lengths; the llama.cpp
comparison is tested up to the GGUF it writes (CI builds no llama.cpp; benchmarks/RESULTS.md
has a run against a real llama-bench).
"""
import json

import numpy as np
import pytest

from engine import kernels, quant as q4
from engine.formats import tpk
from ternary_bench import bench, synthetic


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TERNARY_ENGINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_synthetic_models_reopen_and_hold_the_same_weights(cache):
    targets = [("t2", "f16"), ("t1", "f16"), ("f16", "f16"), ("t2", "int8"), ("t2", "q4")]
    paths = synthetic.ensure_all("tiny", targets)
    assert all(p.startswith(str(cache)) for p in paths)
    models = {t: tpk.read(p) for t, p in zip(targets, paths)}  # read() validates everything
    t2, t1, f16 = (models[(f, "f16")].tensors for f in ("t2", "t1", "f16"))
    cfg = models[("t2", "f16")].config
    assert cfg["architecture"] == "bitnet" and cfg["hidden_size"] == 256
    assert models[("f16", "f16")].config["weight_format"] == "f16"
    for prefix, (n, k) in tpk.linear_shapes(cfg).items():
        w = kernels.unpack("t2", t2[f"{prefix}.weight"], k)
        assert np.array_equal(w, kernels.unpack("t1", t1[f"{prefix}.weight"], k))
        scale = t2[f"{prefix}.scale"][0]
        assert scale == pytest.approx(1 / np.sqrt(k), rel=1e-6)
        assert np.array_equal(f16[f"{prefix}.weight"], (w * scale).astype(np.float16))
        assert abs(np.mean(w == 0) - 1 / 3) < 0.02
    head = models[("t2", "int8")].tensors
    approx = head["lm_head.weight"].astype(np.float32) * head["lm_head.scale"][:, None]
    ref = t2["lm_head.weight"].astype(np.float32)
    assert np.abs(approx - ref).max() <= head["lm_head.scale"].max() * 0.5 + 1e-3
    h4 = models[("t2", "q4")].tensors
    back = q4.dequantize(h4["lm_head.weight"], h4["lm_head.sub"], h4["lm_head.scale"], cfg["hidden_size"])
    rel = np.linalg.norm(back - ref, axis=1) / np.linalg.norm(ref, axis=1)  # 4-bit, groups of 128
    assert rel.max() <= 0.15, rel.max()
    # cached: a second call finds the files instead of remaking them
    mtimes = [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.tpk"))]
    synthetic.ensure_all("tiny", targets)
    assert mtimes == [p.stat().st_mtime_ns for p in sorted(cache.rglob("*.tpk"))]


def test_variant_of_a_tpk_repacks_and_dequantizes(cache):
    t2 = synthetic.ensure("tiny", "t2")
    t1 = tpk.read(synthetic.variant(t2, "t1")).tensors
    same = tpk.read(synthetic.ensure("tiny", "t1")).tensors
    assert all(np.array_equal(t1[n], same[n]) for n in same)
    f16 = tpk.read(synthetic.variant(t2, "f16")).tensors
    ref = tpk.read(synthetic.ensure("tiny", "f16")).tensors
    assert np.array_equal(f16["layers.1.mlp.down.weight"], ref["layers.1.mlp.down.weight"])
    assert synthetic.variant(t2, "t2") == t2
    h4 = tpk.read(synthetic.variant(t2, "t1", "q4")).tensors   # repack + requantize the head
    want = q4.quantize(tpk.read(t2).tensors["lm_head.weight"])
    assert all(np.array_equal(h4[n], w) for n, w in zip(("lm_head.weight", "lm_head.sub", "lm_head.scale"), want))


def test_bench_runs_the_tiny_shape_end_to_end(cache, tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "plot.png"
    rc = bench.main(["--shape", "tiny", "--threads", "1,2", "--pp", "16,32", "--tg", "8",
                     "--reps", "1", "--dram-mb", "64", "--lm-head", "f16,int8,q4", "--json", str(out), "--plot", str(png), "-q"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| tiny " in text and "DRAM read bandwidth" in text
    doc = json.loads(out.read_text())
    assert doc["cpu"] and doc["isa"] == kernels.active_isa()
    rows = doc["rows"]
    assert {(r["format"], r["threads"]) for r in rows} == {
        (f, t) for f in ("t2", "t2/i8", "t2/q4", "t1", "t1/i8", "t1/q4", "f16") for t in (1, 2)}
    fields = ("model", "format", "bits_per_weight", "file_mb", "threads", "pp16_tps", "pp32_tps",
              "tg8_tps", "weights_mb_per_token", "gbps", "dram_gbps", "pct_dram", "speedup_tg",
              "speedup_pp32", "peak_rss_mb", "validated")
    for r in rows:
        for f in fields:
            assert r.get(f) is not None, (r["format"], r["threads"], f)
        assert r["validated"] and r["pp16_tps"] > 0 and r["tg8_tps"] > 0
        if r["threads"] == 2:
            assert 0 <= r["python_overhead"] < 1 and r["kernel_calls_per_step"] > 0
    by = {(r["format"], r["threads"]): r for r in rows}
    assert by[("f16", 1)]["bits_per_weight"] == 16 and by[("f16", 1)]["speedup_tg"] == 1
    assert by[("t2", 1)]["bits_per_weight"] == pytest.approx(2.0, abs=0.1)
    assert by[("t2/i8", 1)]["weights_mb_per_token"] < by[("t2", 1)]["weights_mb_per_token"]
    assert by[("t2/q4", 1)]["weights_mb_per_token"] < by[("t2/i8", 1)]["weights_mb_per_token"]
    assert by[("t1/q4", 1)]["validation"]["logits_equal_to"] == "t2/q4"
    assert by[("t1", 1)]["validation"]["logits_equal_to"] == "t2"
    assert png.stat().st_size > 1000


def test_bench_user_errors_are_one_line(tmp_path, capsys):
    assert bench.main([str(tmp_path / "missing.tpk")]) == 2
    assert bench.main(["--shape", "nope"]) == 2
    (tmp_path / "bad.tpk").write_bytes(b"not a model")
    assert bench.main([str(tmp_path / "bad.tpk")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("ternary-bench: ") for line in err)


def test_validation_catches_a_kernel_that_differs_from_ref(cache, monkeypatch):
    m = tpk.read(synthetic.ensure("tiny", "t2"))
    assert bench.validate_kernels(m.tensors, m.config, 40, 2)["checked"]
    if kernels.active_isa() == "ref":
        pytest.skip("only the reference ISA here")
    real = kernels.ternary_matmul_i32

    def off_by_one(fmt, packed, k, q):
        acc = real(fmt, packed, k, q)
        if kernels.active_isa() != "ref":
            acc[-1, -1] += 1
        return acc

    monkeypatch.setattr(kernels, "ternary_matmul_i32", off_by_one)
    with pytest.raises(bench.BenchError, match="differs from ref"):
        bench.validate_kernels(m.tensors, m.config, 40, 2)


def test_gguf_for_llama_cpp_holds_the_f16_model(cache, tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    monkeypatch.setitem(synthetic.SHAPES, "tiny-tied", dict(synthetic.SHAPES["tiny"], tie_word_embeddings=True))
    for shape, arch in (("tiny-tied", "bitnet"), ("tiny", "llama")):
        src = synthetic.ensure(shape, "f16")
        out = bench.write_gguf(src, str(tmp_path / f"{shape}.gguf"))
        r = gguf.GGUFReader(out)
        assert r.fields["general.architecture"].contents() == arch
        assert r.fields[f"{arch}.block_count"].contents() == 2
        assert len(r.fields["tokenizer.ggml.tokens"].contents()) == 1003
        ts = {t.name: t for t in r.tensors}
        m = tpk.read(src).tensors
        assert np.array_equal(np.asarray(ts["blk.1.ffn_down.weight"].data), m["layers.1.mlp.down.weight"])
        assert np.array_equal(np.asarray(ts["token_embd.weight"].data), m["embed"])
        assert ("output.weight" in ts) == (arch == "llama")
        assert ("blk.0.attn_sub_norm.weight" in ts) == (arch == "bitnet")
        per_token, size, bits = bench.gguf_bytes_per_token(out)
        assert bits == 16 and per_token < size


def _stand_in_peer(bin_dir, pp_per_thread: float) -> str:
    """A llama-quantize that copies its input and a llama-bench that prints JSON records as the
    real one does (pp tok/s = pp_per_thread x threads, tg 7): returns the llama-bench path."""
    bin_dir.mkdir()
    (bin_dir / "llama-quantize").write_text('#!/bin/sh\ncp "$1" "$2"\n')
    (bin_dir / "llama-bench").write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "a = sys.argv[1:]\n"
        "arg = lambda f: a[a.index(f) + 1]\n"
        "recs = [dict(model_filename=arg('-m'), n_threads=int(arg('-t')), n_prompt=int(p), n_gen=0,\n"
        f"             avg_ts={pp_per_thread!r} * int(arg('-t'))) for p in arg('-p').split(',')]\n"
        "recs.append(dict(n_threads=int(arg('-t')), n_prompt=0, n_gen=int(arg('-n')), avg_ts=7.0))\n"
        "print(json.dumps(recs, indent=1))\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return str(bin_dir / "llama-bench")


def test_llama_bench_rows_join_the_table(cache, tmp_path, capsys):
    """The llama.cpp and ik_llama.cpp plumbing with stand-ins for their binaries (none is
    installed here): each peer's rows come from its own llama-bench."""
    llama = _stand_in_peer(tmp_path / "llama", 100.0)
    ik = _stand_in_peer(tmp_path / "ik", 1e6)
    out = tmp_path / "rows.json"
    rc = bench.main(["--shape", "tiny", "--threads", "1,2", "--pp", "16", "--tg", "4", "--reps", "1",
                     "--dram-mb", "64", "--formats", "t2,f16", "--llama-bench", llama,
                     "--ik-llama-bench", ik, "--json", str(out), "-q"])
    assert rc == 0
    rows = {(r["format"], r["threads"]): r for r in json.loads(out.read_text())["rows"]}
    tq2 = rows[("llama.cpp TQ2_0", 2)]
    assert tq2["engine"] == "llama.cpp" and tq2["pp16_tps"] == 200 and tq2["tg4_tps"] == 7
    assert tq2["speedup_tg"] == pytest.approx(7 / rows[("f16", 2)]["tg4_tps"])
    assert rows[("ik_llama.cpp IQ2_BN", 2)]["pp16_tps"] == 2e6
    assert {f for f, _ in rows} == {"t2", "t2/q4", "f16", "llama.cpp F16", "llama.cpp TQ2_0", "llama.cpp TQ1_0",
                                    "ik_llama.cpp F16", "ik_llama.cpp IQ2_BN", "ik_llama.cpp IQ1_BN"}
    # the stand-in ik_llama.cpp prefills at 2e6 tok/s, so that target is missed
    assert "MISS  tiny: pp16 >= ik_llama.cpp's best (ik_llama.cpp IQ2_BN" in capsys.readouterr().out