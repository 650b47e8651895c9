#!/usr/bin/env bash
# Builds the extension with AddressSanitizer + UndefinedBehaviorSanitizer and runs
# the test suite against that build: any out-of-bounds access, use after free or
# undefined behaviour in the kernels aborts the run with a report.
#
# Usage (inside a venv where `pip install ".[test]"` has been done):
#   scripts/check_sanitizers.sh [pytest args...]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="$(command -v python)"

cmake -S "$repo" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Dpybind11_DIR="$("$python" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$python" -DCONVX_WITH_CUDA=OFF >/dev/null
cmake --build "$work/build" >/dev/null

# A package tree holding the Python sources and the sanitized module, put first on
# the path. A fresh venv that sees the current one's site-packages through a plain
# path entry (not a site dir) keeps an installed convx from shadowing it.
mkdir -p "$work/pkg"
cp -r "$repo/python/convx" "$work/pkg/"
cp "$work"/build/_C*.so "$work/pkg/convx/"
"$python" -m venv "$work/venv"
site="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" >"$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/outer.pth"

cd "$repo"
ASAN_OPTIONS=detect_leaks=0 \
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" \
PYTHONPATH="$work/pkg" \
  "$work/venv/bin/python" -c 'import convx; assert "'"$work"'" in convx._C.__file__, convx._C.__file__'
ASAN_OPTIONS=detect_leaks=0 \
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" \
PYTHONPATH="$work/pkg" \
  "$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
