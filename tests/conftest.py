import os
import sys
import tempfile

import pytest

import engine
from engine import kernels

# Reference models run eagerly: transformers' BitNet kernels are @torch.compile'd.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# --import-mode=importlib: let test modules import the shared helpers next to them.
sys.path.insert(0, os.path.dirname(__file__))

# Subprocesses (`python -m engine.cli`, scripts) must import the same `engine` as this process:
# the installed package in CI, never the source tree in the working directory, which has no
# compiled extension. PYTHONSAFEPATH keeps the cwd off their sys.path; PYTHONPATH points at
# the package under test.
_engine_root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
os.environ["PYTHONSAFEPATH"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_engine_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


# Models in tests run the layout their file holds: the runtime kernel choice would repack t2/t1
# files to this CPU's fastest layout and test that one instead. tests/test_kernel_choice.py
# covers the choice with explicit settings; probes never write the user's cache.
os.environ.setdefault("TERNARY_REPACK", "off")
os.environ.setdefault("TERNARY_PROBE_CACHE", os.path.join(
    tempfile.mkdtemp(prefix="ternary-probe-"), "probe.json"))


# TERNARY_ISA=x narrows the per-ISA tests to x (as it selects x for everything else): .ci/run's
# sanitizer stage runs the kernel tests once per ISA that way.
_ISAS = [os.environ["TERNARY_ISA"]] if os.environ.get("TERNARY_ISA") else kernels.available_isas()


@pytest.fixture(params=_ISAS)
def isa(request):
    """Runs the test once per ISA this CPU has (or only TERNARY_ISA's); restores the ISA and
    thread count after."""
    before, threads = kernels.active_isa(), kernels.threads()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(before)
    kernels.set_threads(threads)
