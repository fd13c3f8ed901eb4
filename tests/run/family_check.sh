#!/usr/bin/env bash
# One family end to end: write its small release-shaped checkpoint, run its
# MoE layer with `moex run` on 1, 2 and 4 ranks (each with --check, moex's
# own single-process computation), and compare every output with the
# family's formulas computed independently in double (family_fixtures).
# Usage: family_check.sh <family_fixtures> <moex> <mpirun> <family> <dir>
set -euo pipefail
fixtures=$1 moex=$2 mpirun=$3 family=$4 dir=$5
rm -rf "$dir"
"$fixtures" write "$family" "$dir"
layer=$(cat "$dir/layer")
outputs=()
for np in 1 2 4; do
  echo "== $family on $np rank(s)"
  "$mpirun" -np "$np" --oversubscribe --mca btl self,vader,tcp "$moex" run --quiet --timeout 60 \
    --model "$dir/config.json" --weights "$dir/model.safetensors" --input "$dir/input.safetensors" \
    --layer "$layer" --output "$dir/out$np.safetensors" --steps 1 --check
  outputs+=("$dir/out$np.safetensors")
done
# Twice through a host weight cache: the second run reads its experts back
# from the cache (stacked layouts keyed per expert slice).
for pass in 1 2; do
  echo "== $family on 2 ranks through the weight cache, pass $pass"
  log=$("$mpirun" -np 2 --oversubscribe --mca btl self,vader,tcp "$moex" run --timeout 60 \
    --model "$dir/config.json" --weights "$dir/model.safetensors" --input "$dir/input.safetensors" \
    --layer "$layer" --output "$dir/cached$pass.safetensors" --steps 1 --weight-cache "$dir/cache" 2>&1) || { echo "$log"; exit 1; }
  echo "$log" | grep "weights:" || true
  outputs+=("$dir/cached$pass.safetensors")
done
if ! echo "$log" | grep -qE "weights: ([0-9]+) of \1 experts \(over all ranks\) read from the host cache"; then
  echo "the second pass did not read every expert from the weight cache"
  exit 1
fi
"$fixtures" check "$family" "$dir" "${outputs[@]}"
