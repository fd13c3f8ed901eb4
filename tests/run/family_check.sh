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
outputs=()
for np in 1 2 4; do
  echo "== $family on $np rank(s)"
  "$mpirun" -np "$np" --oversubscribe --mca btl self,vader,tcp "$moex" run --quiet --timeout 60 \
    --model "$dir/config.json" --weights "$dir/model.safetensors" --input "$dir/input.safetensors" \
    --output "$dir/out$np.safetensors" --steps 1 --check
  outputs+=("$dir/out$np.safetensors")
done
"$fixtures" check "$family" "$dir" "${outputs[@]}"
