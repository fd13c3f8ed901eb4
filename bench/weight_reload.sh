#!/usr/bin/env bash
# What a relaunched job pays to get its weights back: each rank's load time
# (the slowest rank's, as `moex run` prints it) from a checkpoint whose
# pages the kernel dropped (a fresh host, or a checkpoint on network
# storage), from one in the page cache, from the seed, and from the host
# weight cache (--weight-cache in /dev/shm) that a relaunch reads back.
# Each figure is the median of --reps runs; ratios are against the cold
# checkpoint and against the seed, measured in the same invocation.
#
#   bench/weight_reload.sh MOEX [--model qwen3-30b-a3b] [--ranks 4] [--reps 3] [--out DIR]
#
# Dropping the page cache needs root (/proc/sys/vm/drop_caches); without it
# the cold case is skipped, saying so. Needs about 2.5x the layer's fp32
# size in free memory (checkpoint pages, /dev/shm cache, the ranks).
set -euo pipefail
moex="$(realpath "$1")"
shift
model=qwen3-30b-a3b ranks=4 reps=3 out=weight-reload-results
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2" ;;
    --ranks) ranks="$2" ;;
    --reps) reps="$2" ;;
    --out) out="$2" ;;
    *) echo "weight_reload.sh: unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$out"
work="$(mktemp -d)"
cache="/dev/shm/moex-weight-reload-$$"
trap 'rm -rf "$work" "$cache" "$cache-seed"' EXIT

checkpoint="$work/layer.safetensors"
echo "weight_reload: writing the $model layer's weights (fp32) to $checkpoint" >&2
"$moex" run --model "$model" --save-weights "$checkpoint" --tokens-per-rank 1 --steps 1 --quiet > /dev/null
size="$(stat -c %s "$checkpoint")"

can_drop=0
if [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; else echo "weight_reload: not root: the cold case is skipped" >&2; fi

# load_seconds ARGS...: the slowest rank's weight load of one run.
load_seconds() {
  mpirun -np "$ranks" --oversubscribe --mca btl self,vader,tcp "$moex" run --model "$model" \
    --tokens-per-rank 1 --steps 1 "$@" 2>&1 | sed -n 's/.*moex run: weights: .*slowest rank \([0-9.]*\) s$/\1/p'
}
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A result
measure() {  # measure NAME PREPARE ARGS...
  local name="$1" prepare="$2"
  shift 2
  local times=()
  for ((i = 0; i < reps; ++i)); do
    eval "$prepare"
    times+=("$(load_seconds "$@")")
  done
  result[$name]="$(printf '%s\n' "${times[@]}" | median)"
  echo "weight_reload: $name: ${times[*]} s -> median ${result[$name]} s" >&2
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

[ "$can_drop" = 1 ] && measure checkpoint_cold "drop" --weights "$checkpoint"
measure checkpoint_page_cache "" --weights "$checkpoint"
measure seed "" --seed 7
rm -rf "$cache" "$cache-seed"
load_seconds --weights "$checkpoint" --weight-cache "$cache" > /dev/null  # fills it
load_seconds --seed 7 --weight-cache "$cache-seed" > /dev/null
measure cache_after_checkpoint "" --weights "$checkpoint" --weight-cache "$cache"
measure cache_after_seed "" --seed 7 --weight-cache "$cache-seed"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf (b > 0 ? "%.2f" : "null"), a / b}'; }
cold="${result[checkpoint_cold]:-0}"
{
  echo "{"
  echo "  \"model\": \"$model\", \"ranks\": $ranks, \"reps\": $reps, \"checkpoint_bytes\": $size,"
  echo "  \"cpus\": $(nproc), \"median_seconds\": {"
  echo "    \"checkpoint_cold\": ${result[checkpoint_cold]:-null},"
  echo "    \"checkpoint_page_cache\": ${result[checkpoint_page_cache]},"
  echo "    \"seed\": ${result[seed]},"
  echo "    \"cache_after_checkpoint\": ${result[cache_after_checkpoint]},"
  echo "    \"cache_after_seed\": ${result[cache_after_seed]}"
  echo "  },"
  echo "  \"speedup_vs_cold_checkpoint\": $([ "$can_drop" = 1 ] && ratio "$cold" "${result[cache_after_checkpoint]}" || echo null),"
  echo "  \"speedup_vs_page_cache_checkpoint\": $(ratio "${result[checkpoint_page_cache]}" "${result[cache_after_checkpoint]}"),"
  echo "  \"speedup_vs_seed\": $(ratio "${result[seed]}" "${result[cache_after_seed]}")"
  echo "}"
} > "$out/weight-reload.json"
cat "$out/weight-reload.json"
