#!/usr/bin/env bash
# Installs every dependency, builds moex, and runs the whole test suite: the
# CI build (warnings are errors), then the unit, multi-rank, CLI and control
# tests again under AddressSanitizer + UndefinedBehaviorSanitizer, and the
# controller's tests under ThreadSanitizer, and the parsers' libFuzzer targets
# (clang) for a short run. This is the README's test command
# and exactly what CI runs (.ci/run). MOEX_SKIP_SANITIZERS=1 runs only the
# first part (about 7 of the 22 minutes on a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cmake --preset ci
cmake --build --preset ci --parallel "$(nproc)"
ctest --preset ci --parallel "$(nproc)"

if [[ "${MOEX_SKIP_SANITIZERS:-0}" != "1" ]]; then
  cmake --preset asan
  cmake --build --preset asan --parallel "$(nproc)"
  ctest --preset asan --parallel "$(nproc)"
  # The ThreadSanitizer build runs its ranks with the ci build's moex.
  cmake --preset tsan
  cmake --build --preset tsan --parallel "$(nproc)"
  ctest --preset tsan --parallel "$(nproc)"
  # libFuzzer (clang, ASan + UBSan), coverage-guided: 20000 inputs a target.
  cmake --preset fuzz
  cmake --build --preset fuzz --parallel "$(nproc)"
  ctest --preset fuzz --parallel "$(nproc)"
fi
