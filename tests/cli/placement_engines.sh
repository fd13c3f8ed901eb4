#!/usr/bin/env bash
# moex placement plan with SGLang's and vLLM's formats, as a user runs it:
# imports the load SGLang's expert-distribution recorder dumps (as JSON),
# plans with moex's policy, exports the placement for SGLang's
# --init-expert-location and in vLLM's EplbState layout, and reads each
# export back as the current placement (the same plan again: 0 moves).
#   placement_engines.sh MOEX FIXTURES
set -euo pipefail
moex=$1
load=$2/sglang_expert_distribution.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
budget=(--replicas 40 --gpus 8 --groups 4 --nodes 2)

"$moex" placement plan --load "$load" --load-format sglang "${budget[@]}" \
  --export sglang --out "$work/sglang.json" > "$work/plan.txt"
cat "$work/plan.txt"
grep -Eq '^layer 0: imbalance \(max/mean GPU load\) 1\.000; balancedness \(mean/max\) 1\.000;' "$work/plan.txt" ||
  fail "the dense layer (all zero) is not balanced 1.000"
grep -Eq '^layer 3: imbalance \(max/mean GPU load\) [0-9.]+; balancedness \(mean/max\) 0\.[0-9]+; slots GPU by GPU:( \|( [0-9]+){5}){8}$' \
  "$work/plan.txt" || fail "layer 3's line"
grep -Eq '^all 4 layers: imbalance \(max/mean\) worst [0-9.]+, mean [0-9.]+; balancedness \(mean/max\) [0-9.]+ \(SGLang: mean over layers\), [0-9.]+ \(vLLM: summed over layers\)$' \
  "$work/plan.txt" || fail "the summary line"
grep -q "wrote the placement for sglang to $work/sglang.json" "$work/plan.txt" || fail "no word of the export"

# SGLang passes the file's keys to init_by_mapping: exactly one key.
keys=$(grep -o '"[a-z_]*":' "$work/sglang.json" | sort -u | tr -d '\n')
[[ $keys == '"physical_to_logical_map":' ]] || fail "keys of the SGLang file: $keys"
# 4 rows (the load's layers) of 40 physical experts.
rows=$(grep -o '\[[0-9,]*\]' "$work/sglang.json")
[[ $(wc -l <<< "$rows") -eq 4 ]] || fail "the SGLang map has $(wc -l <<< "$rows") rows"
while read -r row; do
  [[ $(tr ',' '\n' <<< "$row" | wc -l) -eq 40 ]] || fail "a row of $(tr ',' '\n' <<< "$row" | wc -l) physical experts"
done <<< "$rows"

# Read back (shape, range, every expert present are checked): no moves.
"$moex" placement plan --load "$load" --load-format sglang "${budget[@]}" \
  --current "$work/sglang.json" --current-format sglang --export vllm --out "$work/vllm.json" > "$work/again.txt"
grep -q '^experts moved from --current: 0$' "$work/again.txt" || fail "the SGLang export does not read back: $(cat "$work/again.txt")"
for key in physical_to_logical_map logical_to_physical_map logical_replica_count; do
  grep -q "\"$key\":" "$work/vllm.json" || fail "the vLLM file lacks $key"
done
"$moex" placement plan --load "$load" --load-format sglang "${budget[@]}" \
  --current "$work/vllm.json" --current-format vllm --json > "$work/again.json"
grep -q '"experts_moved": 0' "$work/again.json" || fail "the vLLM export does not read back"
grep -q '"balancedness_sglang":' "$work/again.json" || fail "no balancedness in --json"

# A torch file is refused with the conversion.
printf 'PK\003\004' > "$work/dump.pt"
if "$moex" placement plan --load "$work/dump.pt" --load-format sglang "${budget[@]}" 2> "$work/err.txt"; then
  fail "a .pt file was read"
fi
grep -q "dump.pt: a torch file (.pt, a pickle); moex reads only JSON. Convert it with: python3 -c" "$work/err.txt" ||
  fail "the .pt error: $(cat "$work/err.txt")"
# A load in the wrong format names the field.
if "$moex" placement plan --load "$load" --load-format vllm "${budget[@]}" 2> "$work/err.txt"; then
  fail "an SGLang file was read as vLLM's"
fi
grep -q "sglang_expert_distribution.json: needs field 'global_expert_load'" "$work/err.txt" || fail "$(cat "$work/err.txt")"
echo PASS
