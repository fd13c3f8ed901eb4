#!/usr/bin/env bash
# On a machine with a GPU: the `gpu` tests (kernels, and `moex run --device
# cuda --transport nccl` checked against the CPU computation), the kernel
# benchmark, the layer against PyTorch, and moex run on GPU and CPU side by
# side; everything under docs/results/<date>-<device>/. Run from the
# repository root after a build (cmake --preset default && cmake --build
# --preset default).
#   bench/run_gpu.sh [build/default]
set -uo pipefail
build="${1:-build/default}"
device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | awk '{print $NF}' || true)"
[ -n "$device" ] || { echo "run_gpu.sh: no GPU visible (nvidia-smi found none)"; exit 2; }
out="docs/results/$(date +%F)-${device}"
mkdir -p "$out"
{ date -u; nvidia-smi; } > "$out/gpu-tests.txt" 2>&1
(cd "$build" && ctest -L gpu --output-on-failure) 2>&1 | tee -a "$out/gpu-tests.txt"
"$build/bin/moex_bench_gpu" --json "$out/gpu-bench.json" 2>&1 | tee "$out/gpu-bench.txt"
python3 bench/gpu_layer_torch.py --moex-json "$out/gpu-bench.json" --out "$out/gpu-layer-torch.json" 2>&1 |
  tee -a "$out/gpu-bench.txt"
run="mpirun -np 1 $build/bin/moex run --model mini-dsv3 --tokens-per-rank 4096 --steps 5 --check"
$run --device cuda --transport nccl --json "$out/run-mini-dsv3-gpu.json"
MOEX_BLAS_THREADS="$(nproc)" $run --json "$out/run-mini-dsv3-cpu.json"
mpirun -np 1 "$build/bin/moex" run --model qwen3-30b-a3b --tokens-per-rank 8192 --steps 5 --device cuda \
  --transport nccl --json "$out/run-qwen3-gpu.json"
echo "wrote $out"
