#!/usr/bin/env bash
# Cross-compiles the portable core + csrc/neon.cpp + the tl1 / tl2 NEON kernels for aarch64 with tests/neon/test_neon.cpp and
# runs it under qemu-user. Needs Debian's g++-aarch64-linux-gnu and qemu-user.
# Prints the driver's "<n> passed, <m> failed"; exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cxx="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
qemu="${QEMU_AARCH64:-qemu-aarch64}"
sysroot="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# The same portable sources CMake builds on every architecture, plus the NEON kernels.
core=$(sed -n '/set(CORE_SOURCES/,/)/p' "$root/CMakeLists.txt" | grep -o 'csrc/[A-Za-z0-9_]*\.cpp')
sources=()
for f in $core csrc/neon.cpp csrc/tl1_neon.cpp csrc/tl2_neon.cpp; do sources+=("$root/$f"); done

"$cxx" -std=c++17 -O2 -Wall -Wextra -fno-math-errno -DTERNARY_NEON=1 -I"$root/csrc" \
    "${sources[@]}" "$root/tests/neon/test_neon.cpp" -pthread -o "$out/test_neon"
"$qemu" -L "$sysroot" "$out/test_neon"
