#!/usr/bin/env bash
# Installs every dependency, builds moex, and runs the whole test suite: the
# CI build (warnings are errors) with the virtual-cluster, Slurm, chaos,
# Python and install tests, then the unit, multi-rank, CLI and control tests
# under AddressSanitizer + UndefinedBehaviorSanitizer, the controller's tests
# under ThreadSanitizer, and the parsers' libFuzzer targets (clang) for a
# short run. This is the README's test command
# and exactly what CI runs (.ci/run). MOEX_SKIP_SANITIZERS=1 runs only the
# first part, with every test on the ci build. Each stage's wall time is
# printed as it ends and all of them again at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
# stage NAME COMMAND...: runs COMMAND and records how long it took.
stage() {
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  timings+=("$(printf '%-14s %5d s%s' "$name" $((SECONDS - start)) "$([ "$status" = 0 ] || echo ", FAILED ($status)")")")
  echo "test.sh: $name took $((SECONDS - start)) s"
  return "$status"
}
# Printed on the way out, passed or failed, so that CI's log tail has it.
report() {
  local status=$?
  echo "test.sh: stage times (wall, $(nproc) cores):"
  local line
  for line in "${timings[@]}"; do echo "  $line"; done
  echo "  total          $(printf '%5d' "$SECONDS") s, exit $status"
}
trap report EXIT

stage setup ./scripts/setup.sh
stage ci-build bash -c 'cmake --preset ci && cmake --build --preset ci --parallel "$(nproc)"'
if [[ "${MOEX_SKIP_SANITIZERS:-0}" == "1" ]]; then
  stage ci-tests ctest --preset ci --parallel "$(nproc)"
else
  # The labels the asan stage runs (its test preset's filter) run there
  # only, under ASan + UBSan; this build runs the rest (cluster, chaos,
  # python, install, gpu, layering, limits), whose jobs run this build's
  # moex across virtual hosts, under mpirun and Slurm. Every test runs once.
  stage ci-tests ctest --preset ci --parallel "$(nproc)" --label-exclude '^(unit|mpi|cli|control|fuzz)$'
fi

if [[ "${MOEX_SKIP_SANITIZERS:-0}" != "1" ]]; then
  stage asan-build bash -c 'cmake --preset asan && cmake --build --preset asan --parallel "$(nproc)"'
  stage asan-tests ctest --preset asan --parallel "$(nproc)"
  # The ThreadSanitizer build runs its ranks with the ci build's moex.
  stage tsan-build bash -c 'cmake --preset tsan && cmake --build --preset tsan --parallel "$(nproc)"'
  stage tsan-tests ctest --preset tsan --parallel "$(nproc)"
  # libFuzzer (clang, ASan + UBSan), coverage-guided: 20000 inputs a target.
  stage fuzz-build bash -c 'cmake --preset fuzz && cmake --build --preset fuzz --parallel "$(nproc)"'
  stage fuzz-tests ctest --preset fuzz --parallel "$(nproc)"
fi
