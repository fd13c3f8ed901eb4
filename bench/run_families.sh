#!/usr/bin/env bash
# Each seed model's first runnable MoE layer at full size, expert-parallel on
# 4 ranks from random weights held in a quantised dtype (so that a layer fits
# a 24 GiB machine), one step of 16 tokens a rank, checked against moex's
# single-process computation. Prints one row per model: the layer, its
# dtype, the check's error, the slowest rank's peak resident set, wall time.
#   bench/run_families.sh [build dir] [out dir] [preset:dtype ...]
# (without models: every seed model below; DeepSeek-V4-Pro's layer, 25B
# parameters, needs more than a 24 GiB machine with --check's full copy).
set -euo pipefail
build=${1:-build/ci}
out=${2:-docs/results/$(date +%F)-families}
mkdir -p "$out"
moex="$build/bin/moex"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# preset:dtype (MXFP4 for the layers too large for fp8 here)
models=(llama4-scout:fp8 llama4-maverick:mxfp4 nemotron-3-nano-30b-a3b:fp8 jamba-v0.1:fp8 dbrx:fp8
        gpt-oss-120b:mxfp4 qwen3-235b-a22b:fp8 qwen3-next-80b-a3b:fp8 qwen3.5-397b-a17b:fp8
        deepseek-v4-flash:mxfp4 kimi-k2:mxfp4)
if [ $# -gt 2 ]; then models=("${@:3}"); fi
printf '%-26s %-6s %-7s %-10s %-12s %-16s %s\n' model layer dtype experts check "peak RSS/rank" wall
for entry in "${models[@]}"; do
  model=${entry%%:*} dtype=${entry##*:}
  log="$out/$model.log"
  start=$(date +%s.%N)
  if mpirun -np 4 --oversubscribe --bind-to none "$moex" run --model "$model" --weight-dtype "$dtype" \
      --tokens-per-rank 16 --steps 1 --check --timeout 600 --json "$out/$model.json" > "$log" 2>&1; then
    status=ok
  else
    status=failed
  fi
  wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
  check=$(grep -o 'check: .*' "$log" | grep -o '[0-9.e+-]* (bound' | cut -d' ' -f1 | head -1 || true)
  peak=$(grep -o 'peak resident (VmHWM): .*' "$log" | grep -o '/ [0-9.]* [KMG]iB' | sort -k2 -n | tail -1 | cut -c3- || true)
  layer=$(grep -o 'layer [0-9]*' "$log" | head -1 | cut -d' ' -f2 || true)
  experts=$(grep -o '[0-9]* experts' "$log" | head -1 | cut -d' ' -f1 || true)
  printf '%-26s %-6s %-7s %-10s %-12s %-16s %.0f s %s\n' "$model" "${layer:-?}" "$dtype" "${experts:-?}" \
    "${check:-none}" "${peak:-?}" "$wall" "$status"
done | tee "$out/table.txt"
