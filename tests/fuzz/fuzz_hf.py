"""Fuzz the Hugging Face checkpoint path of ternary-convert: config.json + model.safetensors +
tokenizer files -> engine.convert.convert, then engine.Engine on what it wrote.

One input holds the checkpoint directory's files, separated by SEP, in the order of FILES; an
empty section means the file is absent. Allowed outcome: a .tpk the engine loads and runs, or
ConvertError / TpkError with a one-line message."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SEP = b"\n==> next file <==\n"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")

_SCRATCH = []


def pack(files: dict) -> bytes:
    """{file name: bytes} -> one fuzz input (used by make_seeds.py)."""
    return SEP.join(files.get(name, b"") for name in FILES)


def check(data: bytes, timed=True):
    if not _SCRATCH:
        _SCRATCH.append(harness.scratch_dir())
    src = os.path.join(_SCRATCH[0], "ckpt")
    shutil.rmtree(src, ignore_errors=True)
    os.mkdir(src)
    for name, part in zip(FILES, data.split(SEP, len(FILES) - 1)):
        if part:
            harness.write(os.path.join(src, name), part)
    out = os.path.join(_SCRATCH[0], "out.tpk")
    return harness.run_checked(lambda: harness.convert_then_load(src, out), (), timed=timed)


def warm_up():
    from engine import convert  # noqa: F401
    from engine.formats import tpk  # noqa: F401
    from engine.runtime import model, tokenizer  # noqa: F401
    for name in sorted(os.listdir(os.path.join(harness.CORPUS, "hf")))[:1]:
        with open(os.path.join(harness.CORPUS, "hf", name), "rb") as f:
            check(f.read(), timed=False)


if __name__ == "__main__":
    harness.fuzz_main(check, warm_up)
