"""Every input a fuzz harness (tests/fuzz/) ever crashed on, run through that harness's own
check(): since the reader fix it must load or be refused with our error type and a one-line
message, within the harness's CPU-time limit. The seed corpus runs too, and every seed must
load (a seed the reader refuses fuzzes nothing). No atheris needed."""
import os

import pytest

from fuzz import targets

REGRESSIONS = [(t, p) for t in targets.TARGETS for p in targets.inputs("regressions", t)]
SEEDS = [(t, p) for t in targets.TARGETS for p in targets.inputs("corpus", t)]
_modules = {}


def harness(target):
    if target not in _modules:
        _modules[target] = targets.load(target)
    return _modules[target]


def _id(case):
    return f"{case[0]}/{os.path.basename(case[1])}"


@pytest.mark.parametrize("case", REGRESSIONS, ids=_id)
def test_saved_crash_is_handled(case):
    target, path = case
    with open(path, "rb") as f:
        data = f.read()
    check = harness(target).check
    check(data, timed=False)  # first call: lazy imports and initialisation
    check(data)


@pytest.mark.parametrize("case", SEEDS, ids=_id)
def test_seed_loads(case):
    target, path = case
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) <= 32 * 1024, "seeds stay small"
    assert harness(target).check(data, timed=False) is not None, f"{path}: the seed does not load"
