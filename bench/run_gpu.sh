#!/usr/bin/env bash
# On a machine with a GPU, in about 5 minutes (8 at most: each step has its
# own time limit): the GPU tests, the kernel benchmark, the layer against
# PyTorch's two paths, `moex run`'s own step on the same layer, and moex run
# on GPU and on the CPU side by side; everything under
# docs/results/<date>-<device>/, with a commands.txt saying what ran.
#   bench/run_gpu.sh [DIR]
# DIR is a build folder (bin/moex, bin/moex_bench_gpu, tests/gpu_kernels_test;
# default build/ci) or a bundle from scripts/gpu_bundle.sh (.dev: bin/ holds
# all four, env.sh sets the paths), for a GPU machine without Debian's
# libraries. Run from the repository root.
#
# What it re-measures, and why (issue #22): the CPU side of "GPU against
# CPU" runs with its BLAS threads given the cores (--bind-to none; before,
# sixteen threads shared the one core Open MPI bound the rank to); the
# kernel figures are medians of interleaved repetitions with their spread,
# bytes counted as real traffic; the layer is compared with
# torch._grouped_mm as well as the per-expert loop, and moex run's own step
# on the same layer (bench/gpu_layer.json) is reported beside the kernels.
set -uo pipefail
dir="${1:-build/ci}"
if [ -f "$dir/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$dir/env.sh"
  moex="$dir/bin/moex" bench_gpu="$dir/bin/moex_bench_gpu" kernels_test="$dir/bin/gpu_kernels_test"
else
  moex="$dir/bin/moex" bench_gpu="$dir/bin/moex_bench_gpu" kernels_test="$dir/tests/gpu_kernels_test"
fi
for f in "$moex" "$bench_gpu" "$kernels_test"; do
  [ -x "$f" ] || { echo "run_gpu.sh: $f is missing (build with CUDA: cmake --preset ci; or scripts/gpu_bundle.sh)"; exit 2; }
done
device="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | awk '{print $NF}' || true)"
[ -n "$device" ] || { echo "run_gpu.sh: no GPU visible (nvidia-smi found none)"; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out="docs/results/$(date +%F)-${device}"
mkdir -p "$out"
log="$out/commands.txt"
: > "$log"
# step SECONDS FILE COMMAND...: runs it under a limit, its output to FILE and
# the terminal, the command line and its exit status to commands.txt.
step() {
  local limit="$1" file="$2"
  shift 2
  echo "\$ $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$file"
  local rc="${PIPESTATUS[0]}"
  echo "  -> exit $rc ($file)" >> "$log"
}
{ date -u; nvidia-smi; nproc; } > "$out/gpu-tests.txt" 2>&1
step 120 "$out/gpu-tests.txt" "$kernels_test"
step 240 "$out/gpu-run-tests.txt" bash tests/gpu/run_on_gpu.sh "$moex" mpirun
# The kernels: medians of 50 interleaved repetitions, p10-p90.
step 120 "$out/gpu-bench.txt" "$bench_gpu" --reps 50 --json "$out/gpu-bench.json"
# moex run's own step on the layer moex_bench_gpu times (4096 tokens, top-8
# of 32 experts, hidden 7168, width 2048): 6 steps, the first not counted.
step 120 "$out/run-bench-layer-gpu.txt" mpirun -np 1 "$moex" run --model bench/gpu_layer.json --tokens-per-rank 4096 \
  --steps 6 --device cuda --transport nccl --json "$out/run-bench-layer-gpu.json"
step 180 "$out/gpu-layer-torch.txt" python3 bench/gpu_layer_torch.py --moex-json "$out/gpu-bench.json" \
  --moex-run-json "$out/run-bench-layer-gpu.json" --reps 50 --out "$out/gpu-layer-torch.json"
# GPU against CPU on mini-dsv3: the CPU path with one BLAS thread per core,
# and the rank unbound so that the threads have those cores (cpus_bound in
# the JSON says how many it had).
run=(run --model mini-dsv3 --tokens-per-rank 4096 --steps 6 --check)
step 120 "$out/run-mini-dsv3.txt" mpirun -np 1 "$moex" "${run[@]}" --device cuda --transport nccl \
  --json "$out/run-mini-dsv3-gpu.json"
step 120 "$out/run-mini-dsv3.txt" env MOEX_BLAS_THREADS="$(nproc)" mpirun -np 1 --bind-to none "$moex" "${run[@]}" \
  --json "$out/run-mini-dsv3-cpu.json"
step 120 "$out/run-qwen3.txt" mpirun -np 1 "$moex" run --model qwen3-30b-a3b --tokens-per-rank 8192 --steps 6 \
  --device cuda --transport nccl --json "$out/run-qwen3-gpu.json"
echo "wrote $out (what ran: $log)"
