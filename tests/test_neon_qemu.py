"""The NEON kernels, cross-compiled for aarch64 and run under qemu-user against the scalar
reference (tests/neon/run.sh, driver tests/neon/test_neon.cpp). Skipped unless Debian's
g++-aarch64-linux-gnu and qemu-user are installed (.ci/run installs them)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).parent / "neon" / "run.sh"


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-g++") and shutil.which("qemu-aarch64")),
                    reason="needs g++-aarch64-linux-gnu and qemu-user")
def test_neon_kernels_match_reference_under_qemu():
    res = subprocess.run(["bash", str(RUN)], capture_output=True, text=True, timeout=900)
    summary = re.search(r"(\d+) passed, (\d+) failed", res.stdout)
    assert res.returncode == 0 and summary, res.stdout[-3000:] + res.stderr[-3000:]
    assert int(summary.group(1)) > 0 and summary.group(2) == "0", res.stdout[-3000:]
