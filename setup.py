"""Thin shim: setuptools hands the build of engine._kernels to CMake (pybind11 cmake_example style)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("CMAKE_BUILD_TYPE", "Release")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        # Extra CMake arguments from the environment (cmake_example / scikit-build convention),
        # e.g. CMAKE_ARGS="-DTERNARY_SANITIZE=ON" for the sanitized CI build.
        # The build directory is reused between builds and CMake caches options, so say OFF
        # explicitly: a plain build after a sanitized one must not stay sanitized.
        cmake_args += ["-DTERNARY_SANITIZE=OFF", *shlex.split(os.environ.get("CMAKE_ARGS", ""))]
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


setup(ext_modules=[CMakeExtension("engine._kernels")], cmdclass={"build_ext": CMakeBuild})
