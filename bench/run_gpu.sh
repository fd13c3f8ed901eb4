#!/usr/bin/env bash
# On a machine with a GPU: the `gpu` tests and the GPU benchmark, their
# output under docs/results/<date>-<device>/. Run from the repository root
# after a build (cmake --preset default && cmake --build --preset default).
#   bench/run_gpu.sh [build/default]
set -uo pipefail
build="${1:-build/default}"
device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' || true)"
[ -n "$device" ] || { echo "run_gpu.sh: no GPU visible (nvidia-smi found none)"; exit 2; }
out="docs/results/$(date +%F)-${device}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
(cd "$build" && ctest -L gpu --output-on-failure) 2>&1 | tee "$out/gpu-tests.txt"
"$build/bin/moex_bench_gpu" --json "$out/gpu-bench.json" 2>&1 | tee "$out/gpu-bench.txt"
echo "wrote $out"
