"""A short fuzz run of every harness in tests/fuzz/ (FUZZ_SHORT_SECONDS each, default 20), in a
subprocess: exit status 0 means no finding. The long runs (>= 10^6 executions per target) are
tests/fuzz/run_long.sh, not part of the suite. Skipped only when atheris is not installed."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from fuzz import targets

pytest.importorskip("atheris")

SECONDS = int(os.environ.get("FUZZ_SHORT_SECONDS", "20"))
SEED = int(os.environ.get("FUZZ_SEED", "1"))  # one mutation sequence: a CI failure replays


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_fuzz_short(target, tmp_path):
    work = tmp_path / "corpus"  # new inputs go here, never into the committed seed corpus
    work.mkdir()
    seeds = os.path.join(targets.HERE, "corpus", target)
    cmd = [sys.executable, targets.script(target), str(work), seeds,
           f"-max_total_time={SECONDS}", f"-seed={SEED}", f"-artifact_prefix={tmp_path}{os.sep}",
           "-print_final_stats=1"]
    # One thread everywhere: the per-input limit is CPU time, which spinning BLAS/OpenMP worker
    # threads inflate on a busy machine (seen as a false hang under load).
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=SECONDS * 5 + 120)
    out = proc.stdout + proc.stderr
    crashes = [p for p in os.listdir(tmp_path) if p.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    if proc.returncode != 0:
        keep = os.environ.get("FUZZ_KEEP_CRASHES")
        if keep:
            os.makedirs(keep, exist_ok=True)
            for c in crashes:
                shutil.copy(tmp_path / c, os.path.join(keep, f"{target}-{c}"))
        pytest.fail(f"fuzz target {target}: exit {proc.returncode}, artifacts {crashes}\n{out[-4000:]}")
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    print(f"fuzz {target}: {runs.group(1) if runs else '?'} executions in {SECONDS} s")
    assert runs and int(runs.group(1)) > 0, out[-2000:]
