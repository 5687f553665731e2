#!/usr/bin/env bash
# Builds the op library with CMake against the venv's torch and runs its C++ smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-cmake -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX" -DPython3_EXECUTABLE="$(pwd)/.venv/bin/python" >/dev/null
cmake --build build-cmake -j 2
(cd build-cmake && ctest --output-on-failure)
