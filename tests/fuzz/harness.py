"""Shared machinery of the fuzz harnesses (tests/fuzz/fuzz_*.py, run with atheris).

Each harness defines check(data: bytes): it feeds the bytes to one reader the way a user's
file reaches it and returns normally if the reader either loaded it or raised one of our own
error types (allowed[...]) with a one-line message. Anything else is a finding and raises
Finding (or lets the unexpected exception through): a numpy/struct/json/KeyError traceback, a
MemoryError from a size field, more than HANG_CPU_S of CPU time on one input. Segfaults and
reads outside the file are caught by the process dying (atheris reports it) and by the checks
on the views the readers hand out.

tests/test_fuzz_regressions.py runs the saved crashing inputs (tests/fuzz/regressions/<target>/)
through the same check(), and tests/test_fuzz_short.py runs every harness for a short while.

    python tests/fuzz/fuzz_tpk.py tests/fuzz/corpus/tpk -max_total_time=30      # fuzz
    python tests/fuzz/fuzz_tpk.py tests/fuzz/regressions/tpk/crash-...         # replay one
"""
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
REGRESSIONS = os.path.join(HERE, "regressions")

HANG_CPU_S = float(os.environ.get("FUZZ_HANG_CPU_S", "1.0"))  # CPU seconds allowed per input
# bytes of address space an input may add: a size field asking for more is a MemoryError (a
# finding), not a swap storm (the long runs raise it: libFuzzer's own memory grows with the run)
ADDRESS_SPACE_MARGIN = int(float(os.environ.get("FUZZ_ADDRESS_SPACE_GB", "4")) * (1 << 30))
MAX_LEN = 1 << 16               # inputs stay small: any big allocation is from a size field


class Finding(AssertionError):
    """A reader misbehaved on this input."""


def scratch_dir():
    """A private directory for the files built from fuzz inputs (tmpfs when there is one)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="ternary-fuzz-", dir=base)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def expect_clean_error(exc, allowed):
    """exc was raised by a reader: it must be one of ours and say what is wrong in one line."""
    if not isinstance(exc, allowed):
        raise exc
    msg = str(exc)
    if not msg or "\n" in msg or "Traceback" in msg:
        raise Finding(f"{type(exc).__name__} without a clean one-line message: {msg!r:.300}") from exc


class Timer:
    """CPU time of one input (robust to a busy shared machine, unlike wall time)."""

    def __enter__(self):
        self.t0 = time.process_time()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.t0
        return False


def run_checked(fn, allowed, timed=True):
    """fn() -> its result, or None if it raised an allowed error; Finding on anything else."""
    with Timer() as t:
        try:
            result = fn()
        except MemoryError as e:
            raise Finding("MemoryError: a size field was trusted") from e
        except RecursionError as e:
            raise Finding("RecursionError on a small input") from e
        except allowed as e:
            expect_clean_error(e, allowed)
            result = None
    if timed and t.cpu > HANG_CPU_S:
        raise Finding(f"one input took {t.cpu:.2f} s of CPU time (limit {HANG_CPU_S} s)")
    return result


def check_views_inside(tensors, buf_start, buf_len, what):
    """Every view of the file a reader hands out lies inside its mapping [buf_start, +buf_len)
    (arrays that own their memory, e.g. aligned copies, are not views of the file)."""
    for name, arr in tensors.items():
        n = arr.nbytes
        if n == 0 or arr.base is None:
            continue
        p = arr.__array_interface__["data"][0]
        if p < buf_start or p + n > buf_start + buf_len:
            raise Finding(f"{what}: tensor {name!r} [{p:#x}, +{n}) outside the mapping "
                          f"[{buf_start:#x}, +{buf_len})")


def mapping_of(arr):
    """(start address, length) of the mmap (or bytes) a read-only view was made from, or None
    if arr owns its memory."""
    import numpy as np

    if arr.base is None:
        return None
    base = arr
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    whole = np.frombuffer(base, np.uint8)
    return whole.__array_interface__["data"][0], whole.nbytes


def _limit_address_space():
    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = vm + ADDRESS_SPACE_MARGIN
    if hard == resource.RLIM_INFINITY or want <= hard:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))


def fuzz_main(check, warm_up, instrument=("engine",)):
    """Entry point of a harness script: python fuzz_x.py [libFuzzer flags] [corpus dirs|files].

    warm_up(): imports the modules under test (instrumented for coverage) and runs one known
    good input so that lazy initialisation does not count against the first fuzz input.
    """
    import atheris

    with atheris.instrument_imports(include=list(instrument)):
        warm_up()
    _limit_address_space()
    argv = list(sys.argv)
    if not any(a.startswith("-max_len=") for a in argv):
        argv.insert(1, f"-max_len={MAX_LEN}")
    if not any(a.startswith("-timeout=") for a in argv):
        argv.insert(1, "-timeout=20")  # wall clock, for a real hang; CPU time is checked per input

    def one_input(data):
        check(bytes(data))

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def convert_then_load(src, out):
    """ternary-convert src -> out, then load and run what it wrote.

    ConvertError and TpkError from the conversion are clean rejections (ternary-convert prints
    either as one `error:` line); once convert() has written a .tpk, the engine must load it:
    a TpkError there means the converter wrote a file the engine rejects, a finding.
    """
    from engine import Engine
    from engine.convert import ConvertError, convert
    from engine.formats.tpk import TpkError

    if os.path.exists(out):
        os.unlink(out)
    try:
        convert(src, out, progress=False)
    except (ConvertError, TpkError) as e:
        expect_clean_error(e, (ConvertError, TpkError))
        return None
    try:
        eng = Engine(out, threads=1, ctx=8)
        eng.forward([0])
    except TpkError as e:
        raise Finding(f"convert() wrote a .tpk the engine rejects: {e}") from e
    return eng
