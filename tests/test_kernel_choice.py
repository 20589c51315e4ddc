"""The runtime kernel choice (engine/runtime/kernel_choice.py, kernel_probe.py): settings and
their errors, forced choices, the probe cache (miss, hit, fresh, foreign file), the decision
rules on given timings, the table, and bit-identical logits whichever layout runs each bucket."""
import json

import numpy as np
import pytest

from engine import kernels
from engine.runtime import kernel_choice as kc
from engine.runtime import kernel_probe
from engine.runtime.model import Model
from tiny_models import write_tiny

IDS_GEMM = list(range(3, 23))     # 20 tokens: the gemm bucket
IDS_FEW = list(range(30, 35))     # 5 tokens: the few bucket


@pytest.fixture(scope="module", params=["t2", "tl2"])
def tiny(request, tmp_path_factory):
    """A tiny model file per layout; K = 64, 96 and N = 64, 32, 96 hit every kernel's tails."""
    path = tmp_path_factory.mktemp("choice") / f"tiny-{request.param}.tpk"
    return str(write_tiny(path, weight_format=request.param, layers=2, hidden=64, inter=96))


@pytest.fixture
def cheap_probe(monkeypatch):
    """Probes of the tiny shapes in milliseconds (timings are never asserted)."""
    monkeypatch.setattr(kernel_probe, "COLD_BYTES", 1 << 16)
    monkeypatch.setattr(kernel_probe, "MIN_SECONDS", 1e-4)
    monkeypatch.setattr(kernel_probe, "ROUNDS", 1)
    monkeypatch.setattr(kc, "PROBE_MIN_BYTES", 0)  # the tiny models are probed, not tabled


def test_small_model_uses_the_table_not_the_probe(tiny, tmp_path):
    """Under the default TERNARY_PROBE=on a model below PROBE_MIN_BYTES is not probed (the
    probe would cost more than its load), and no cache file is written."""
    path = tmp_path / "probe.json"
    plan = Model(tiny, kernels=kc.Settings(cache_path=str(path))).kernel_plan
    assert plan.probes == 0 and plan.source in ("table", "file") and not path.exists()


def outputs(model):
    """Logits of a 20-token prefill, a 5-token continuation and one decode step."""
    a = model.forward(IDS_GEMM, 0)
    b = model.forward(IDS_FEW, len(IDS_GEMM))
    c = model.step(7, len(IDS_GEMM) + len(IDS_FEW)).copy()
    return a, b, c


def test_bucket_index():
    assert [kc.bucket_index(m) for m in (1, 2, 8, 16, 17, 128, 256)] == [0, 1, 1, 1, 2, 2, 2]


def test_parse_forced():
    assert kc.parse_forced("") == kc.parse_forced("auto") == (None, None, None)
    assert kc.parse_forced("TL2") == ("tl2", "tl2", "tl2")
    assert kc.parse_forced("gemv=tl2, gemm=t2") == ("tl2", None, "t2")
    for bad in ("tl3", "gemv=tl3", "decode=tl2", "gemv=tl2,gemv=t2", "gemv"):
        with pytest.raises(kc.KernelChoiceError, match="TERNARY_KERNEL"):
            kc.parse_forced(bad)


def test_settings_from_env():
    s = kc.Settings.from_env({"TERNARY_KERNEL": "few=t1", "TERNARY_PROBE": "0",
                              "TERNARY_REPACK": "dual", "TERNARY_PROBE_CACHE": "/x/p.json"})
    assert s == kc.Settings((None, "t1", None), "off", "dual", "/x/p.json")
    assert kc.Settings.from_env({}) == kc.Settings()
    with pytest.raises(kc.KernelChoiceError, match="TERNARY_PROBE='sometimes'"):
        kc.Settings.from_env({"TERNARY_PROBE": "sometimes"})
    with pytest.raises(kc.KernelChoiceError, match="TERNARY_REPACK='always'"):
        kc.Settings.from_env({"TERNARY_REPACK": "always"})


def test_bad_environment_fails_the_model_load(tiny, monkeypatch):
    monkeypatch.setenv("TERNARY_KERNEL", "fastest")
    with pytest.raises(kc.KernelChoiceError, match="unknown layout"):
        Model(tiny)


def test_bad_environment_is_one_cli_error_line(monkeypatch, capsys):
    from engine.cli import run_main
    monkeypatch.setenv("TERNARY_KERNEL", "gemv=nope")
    assert run_main(["-n", "1", "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: TERNARY_KERNEL='gemv=nope'")


def test_forcing_a_layout_with_repack_off_is_an_error(tiny):
    with pytest.raises(kc.KernelChoiceError, match="TERNARY_REPACK=off"):
        Model(tiny, kernels=kc.Settings(forced=("t1", None, None), repack="off"))


def test_forced_layouts_give_identical_logits(isa, tiny):
    """Every layout, a mix per bucket, and the automatic choices: the same logits bit for bit."""
    base = Model(tiny, kernels=kc.Settings(repack="off"))
    file_layout = base.args.weight_format
    assert {lin.plan for L in base.layers for lin in (L.q, L.o, L.down)} == {(file_layout,) * 3}
    want = outputs(base)
    settings = [kc.Settings(forced=(f,) * 3) for f in kernels.FORMATS]
    settings += [kc.Settings(forced=("tl2", "t1", "tl1")), kc.Settings(forced=("t2", "tl1", "tl2")),
                 kc.Settings(probe="off"), kc.Settings(probe="off", repack="dual")]
    for s in settings:
        m = Model(tiny, kernels=s)
        if all(s.forced):
            for L in m.layers:
                for lin in (L.q, L.k, L.v, L.o, L.gate, L.up, L.down):
                    assert lin.plan == s.forced and set(lin.packed) == set(s.forced)
            assert m.kernel_plan.source == "forced"
        for w, g in zip(want, outputs(m)):
            assert np.array_equal(w, g), (isa, s)


def test_repacked_bytes_are_counted(tiny):
    m = Model(tiny, kernels=kc.Settings(forced=("t1", "t1", "t2")))
    file_layout = m.args.weight_format
    extra = sum(w.nbytes for L in m.layers for lin in (L.q, L.k, L.v, L.o, L.gate, L.up, L.down)
                for f, w in lin.packed.items() if f != file_layout)
    assert extra > 0 and m.kernel_plan.repacked_bytes == extra
    same = Model(tiny, kernels=kc.Settings(forced=(file_layout,) * 3))
    assert same.kernel_plan.repacked_bytes == 0


def test_probe_cache_miss_hit_fresh(tiny, tmp_path, cheap_probe):
    path = tmp_path / "sub" / "probe.json"
    first = Model(tiny, kernels=kc.Settings(cache_path=str(path))).kernel_plan
    assert first.source == "probe" and first.probes > 0
    data = json.loads(path.read_text())
    assert data["version"] == kernel_probe.VERSION and data["cpu"] == kernel_probe.cpu_id()
    isa, threads = kernels.active_isa(), kernels.threads()
    assert kernel_probe.key("t1", 64, 96, 8, isa, threads) in data["entries"]  # the down projection
    assert {k.split("|")[0] for k in data["entries"]} == set(kernels.FORMATS)
    second = Model(tiny, kernels=kc.Settings(cache_path=str(path))).kernel_plan
    assert second.probes == 0 and second.choices == first.choices
    fresh = Model(tiny, kernels=kc.Settings(probe="fresh", cache_path=str(path))).kernel_plan
    assert fresh.probes == first.probes


def test_probe_cache_of_another_cpu_is_ignored(tiny, tmp_path, cheap_probe):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"version": kernel_probe.VERSION, "cpu": "another", "entries": {}}))
    assert Model(tiny, kernels=kc.Settings(cache_path=str(path))).kernel_plan.probes > 0
    path.write_text("not json")
    assert Model(tiny, kernels=kc.Settings(cache_path=str(path))).kernel_plan.probes > 0
    assert json.loads(path.read_text())["cpu"] == kernel_probe.cpu_id()  # rewritten


def test_probe_threads_and_isa_are_part_of_the_key(tiny, tmp_path, cheap_probe):
    path = str(tmp_path / "probe.json")
    before = kernels.active_isa(), kernels.threads()
    try:
        kernels.set_threads(1)
        Model(tiny, kernels=kc.Settings(cache_path=path))
        kernels.set_threads(2)
        assert Model(tiny, kernels=kc.Settings(cache_path=path)).kernel_plan.probes > 0
        kernels.set_isa("ref")
        ref = Model(tiny, kernels=kc.Settings(cache_path=path)).kernel_plan
        assert ref.probes > 0 and ref.isa == "ref"
    finally:
        kernels.set_isa(before[0])
        kernels.set_threads(before[1])


def fake_times(times):
    """A kernel_probe.measure stand-in: seconds per call from {layout: (gemv, few, gemm)}."""
    def measure(n, k, m, layouts, cold):
        return {lay: times[lay][kc.PROBE_M.index(m)] for lay in layouts}
    return measure


@pytest.mark.parametrize("repack,want", [
    ("auto", ("tl2", "tl2", "tl2")),   # tl2's worst bucket (gemm, 1.1x) beats t2's (gemv, 2x)
    ("dual", ("tl2", "tl2", "t2")),    # the best per bucket
    ("off", ("t2", "t2", "t2")),
])
def test_decision_rules(tmp_path, monkeypatch, repack, want):
    path = tmp_path / "m.tpk"
    write_tiny(path, weight_format="t2")
    times = {"t2": (2.0, 2.0, 1.0), "t1": (3.0, 3.0, 3.0), "tl1": (2.5, 2.5, 2.0), "tl2": (1.0, 1.5, 1.1)}
    monkeypatch.setattr(kernel_probe, "measure", fake_times(times))
    plan = Model(str(path), kernels=kc.Settings(repack=repack, probe="fresh",
                                                cache_path=str(tmp_path / "p.json"))).kernel_plan
    assert set(plan.choices.values()) == {want}
    assert plan.per_bucket() == ", ".join(f"{b} {lay}" for b, lay in zip(kc.BUCKETS, want))


def test_small_gains_keep_the_file_layout(tmp_path, monkeypatch):
    path = tmp_path / "m.tpk"
    write_tiny(path, weight_format="t2")
    times = {"t2": (1.0, 1.0, 1.0), "t1": (2.0, 2.0, 2.0), "tl1": (2.0, 2.0, 2.0), "tl2": (0.97, 0.97, 0.97)}
    monkeypatch.setattr(kernel_probe, "measure", fake_times(times))
    for repack in ("auto", "dual"):
        plan = Model(str(path), kernels=kc.Settings(repack=repack, probe="fresh",
                                                    cache_path=str(tmp_path / "p.json"))).kernel_plan
        assert set(plan.choices.values()) == {("t2", "t2", "t2")} and plan.repacked_bytes == 0


def test_partly_forced_buckets_probe_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "m.tpk"
    write_tiny(path, weight_format="t2")
    times = {"t2": (2.0, 2.0, 1.0), "t1": (3.0, 3.0, 3.0), "tl1": (2.5, 2.5, 2.0), "tl2": (1.0, 1.5, 1.1)}
    monkeypatch.setattr(kernel_probe, "measure", fake_times(times))
    plan = Model(str(path), kernels=kc.Settings(forced=(None, None, "t1"), probe="fresh",
                                                cache_path=str(tmp_path / "p.json"))).kernel_plan
    assert set(plan.choices.values()) == {("tl2", "tl2", "t1")} and plan.source == "probe"


def test_table_when_probing_is_off(tiny):
    before = kernels.active_isa()
    try:
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            for repack in ("auto", "dual"):
                plan = Model(tiny, kernels=kc.Settings(probe="off", repack=repack)).kernel_plan
                file_layout = plan.file_layout
                per_bucket, single = kc.TABLE.get(isa, ((file_layout,) * 3, file_layout))
                want = per_bucket if repack == "dual" else (single,) * 3
                assert set(plan.choices.values()) == {tuple(want)}
    finally:
        kernels.set_isa(before)


def test_f16_models_have_no_choice(tmp_path):
    path = tmp_path / "f16.tpk"
    write_tiny(path, weight_format="f16")
    assert Model(str(path), kernels=kc.Settings(forced=("tl2",) * 3)).kernel_plan is None


def test_details_name_every_group(tiny):
    plan = Model(tiny, kernels=kc.Settings(forced=("tl2", "t2", "tl1"))).kernel_plan
    lines = plan.details()
    assert lines[0].startswith(f"kernel choice ({kernels.active_isa()}, ")
    assert "gemv tl2, few t2, gemm tl1" in lines[0]
    assert sorted(lines[1:]) == sorted(["  [64x64 + 32x64 + 32x64] gemv tl2, few t2, gemm tl1",
                                        "  [64x64] gemv tl2, few t2, gemm tl1",
                                        "  [96x64 + 96x64] gemv tl2, few t2, gemm tl1",
                                        "  [64x96] gemv tl2, few t2, gemm tl1"])


def test_bench_kernel_variants():
    from ternary_bench import bench
    assert bench.kernel_choices(None) is None
    assert bench.kernel_choices("auto,tl2") == ["auto", "tl2"]
    assert bench.kernel_choices("auto;gemv=tl2,gemm=t2") == ["auto", "gemv=tl2,gemm=t2"]
    with pytest.raises(bench.BenchError, match="--kernel"):
        bench.kernel_choices("auto,tl9")
    vs = bench.with_kernels([bench.Variant("t2/q4", "a.tpk"), bench.Variant("f16", "b.tpk")], ["auto", "t1"])
    assert [(v.label, v.kernel) for v in vs] == [("t2/q4 k=auto", "auto"), ("t2/q4 k=t1", "t1"), ("f16", None)]


def test_each_call_runs_its_buckets_layout(tiny, monkeypatch):
    """The layout a call runs follows its token count: gemv / few / gemm as forced."""
    m = Model(tiny, kernels=kc.Settings(forced=("tl2", "t1", "tl1")))
    seen = set()
    real = kernels.ternary_linear_fused

    def spy(fmt, weights, k, q, *args, **kw):
        seen.add((fmt, q.shape[0]))
        return real(fmt, weights, k, q, *args, **kw)

    monkeypatch.setattr(kernels, "ternary_linear_fused", spy)
    outputs(m)
    assert seen == {("tl1", len(IDS_GEMM)), ("t1", len(IDS_FEW)), ("tl2", 1)}


def test_per_projection_norm_path_runs_the_choice_too(tmp_path):
    """Llama + BitLinear with in_norm: one ternary_linear call per projection, same plans."""
    path = tmp_path / "llama.tpk"
    write_tiny(path, arch="llama", weight_format="tl2", proj_norm_eps=1e-6)
    want = outputs(Model(str(path), kernels=kc.Settings(repack="off")))
    for forced in (("t2", "t1", "tl1"), ("tl1", "tl2", "t2")):
        got = outputs(Model(str(path), kernels=kc.Settings(forced=forced)))
        assert all(np.array_equal(w, g) for w, g in zip(want, got)), forced
