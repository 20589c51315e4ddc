"""Fuzz the GGUF reader: bytes -> a .gguf file -> ternary-convert (engine.convert.convert), then
engine.Engine on what it wrote. Allowed outcome: a .tpk the engine loads and runs, or
ConvertError / TpkError with a one-line message."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

_SCRATCH = []


def check(data: bytes, timed=True):
    if not _SCRATCH:
        _SCRATCH.append(harness.scratch_dir())
    src = harness.write(os.path.join(_SCRATCH[0], "in.gguf"), data)
    out = os.path.join(_SCRATCH[0], "out.tpk")
    return harness.run_checked(lambda: harness.convert_then_load(src, out), (), timed=timed)


def warm_up():
    import gguf  # noqa: F401
    from engine import convert  # noqa: F401
    from engine.convert import gguf as gguf_reader  # noqa: F401
    from engine.formats import tpk  # noqa: F401
    from engine.runtime import model, tokenizer  # noqa: F401
    for name in sorted(os.listdir(os.path.join(harness.CORPUS, "gguf")))[:1]:
        with open(os.path.join(harness.CORPUS, "gguf", name), "rb") as f:
            check(f.read(), timed=False)


if __name__ == "__main__":
    harness.fuzz_main(check, warm_up, instrument=("engine", "gguf"))
