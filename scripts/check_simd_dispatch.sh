#!/usr/bin/env bash
# Proves that one build runs on any x86-64: compiles the kernels exactly as the
# package does (no -march) with a small driver (tests/cpp/simd_dispatch_check.cpp),
# then runs it under qemu user-mode emulation as a baseline x86-64 CPU (qemu64),
# a pre-AVX CPU (Nehalem) and an AVX2 CPU (Haswell), and natively. Each run must
# report the SIMD level of that CPU, not die of SIGILL, and match the references.
#
# Needs g++ with OpenMP and qemu-user (Debian: apt-get install qemu-user).
set -euo pipefail
# A preloaded runtime (the sanitizer run preloads libasan) would be loaded into qemu itself.
unset LD_PRELOAD
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found: apt-get install qemu-user" >&2; exit 2; }

g++ -std=gnu++17 -O3 -fno-math-errno -fopenmp -I"$repo/csrc" "$repo"/csrc/cpu/*.cpp "$repo/tests/cpp/simd_dispatch_check.cpp" \
  -o "$work/simd_dispatch_check"

status=0
expect() {  # cpu expected-level command...
  local cpu=$1 level=$2; shift 2
  echo "== $cpu (expect $level)"
  if out="$(OMP_NUM_THREADS=2 "$@" "$work/simd_dispatch_check" 2>&1)"; then :; else status=1; fi
  echo "$out"
  grep -q "SIMD level: $level" <<<"$out" || { echo "!! expected SIMD level $level"; status=1; }
}
expect qemu64 scalar qemu-x86_64 -cpu qemu64
expect Nehalem scalar qemu-x86_64 -cpu Nehalem
expect Haswell avx2 qemu-x86_64 -cpu Haswell
native="$(python3 - <<'PY'
flags = open("/proc/cpuinfo").read()
print("avx512" if " avx512f" in flags and " avx512vl" in flags and " avx512bw" in flags else
      "avx2" if " avx2" in flags and " fma" in flags else "scalar")
PY
)"
expect native "$native" env
exit $status
