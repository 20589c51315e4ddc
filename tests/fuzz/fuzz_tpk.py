"""Fuzz the .tpk reader: bytes -> a .tpk file -> engine.Engine (tpk.read, Model, Tokenizer) -> one
forward step. Allowed outcome: a working model or TpkError with a one-line message."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

_SCRATCH = None


def _path():
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = harness.scratch_dir()
    return os.path.join(_SCRATCH, "in.tpk")


def load(path):
    """What `ternary-run model.tpk` does before generating: open, build, run one token."""
    from engine import Engine

    eng = Engine(path, threads=1, ctx=8)
    tensors = eng.tpk.tensors
    mappings = {harness.mapping_of(a) for a in tensors.values()} - {None}
    if len(mappings) > 1:
        raise harness.Finding(f"{path}: views of {len(mappings)} different buffers")
    for start, length in mappings:
        harness.check_views_inside(tensors, start, length, path)
    eng.forward([0])
    eng.tokenizer.decode(eng.tokenizer.encode("Hi there"))
    return eng


def check(data: bytes, timed=True):
    from engine.formats.tpk import TpkError

    path = harness.write(_path(), data)
    return harness.run_checked(lambda: load(path), (TpkError,), timed=timed)


def warm_up():
    import engine  # noqa: F401
    from engine.formats import tpk  # noqa: F401
    from engine.runtime import model, tokenizer  # noqa: F401
    for name in sorted(os.listdir(os.path.join(harness.CORPUS, "tpk")))[:1]:
        with open(os.path.join(harness.CORPUS, "tpk", name), "rb") as f:
            check(f.read(), timed=False)


if __name__ == "__main__":
    harness.fuzz_main(check, warm_up)
