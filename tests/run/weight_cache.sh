#!/usr/bin/env bash
# `moex run --weight-cache`: a relaunch reads back what the host's cache
# holds and loads only the rest; a removed entry is loaded again, a corrupt
# one is named and loaded again; the output stays equal to the reference.
#   weight_cache.sh MOEX CHECKPOINT
set -euo pipefail
moex="$1"
checkpoint="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cache="$(mktemp -d)/cache"
trap 'rm -rf "$(dirname "$cache")"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
run() {
  mpirun -np 3 --oversubscribe --mca btl self,vader,tcp "$moex" run --model tiny --layer 0 --weights "$checkpoint" \
    --weight-cache "$cache" --tokens-per-rank 11 --steps 1 --check --timeout 30 2>&1
}
expect() {  # expect OUTPUT REGEX WHAT
  echo "$1" | grep -E "weights:|warning|check:"
  echo "$1" | grep -Eq "$2" || fail "$3"
  echo "$1" | grep -Eq "check: .* PASS" || fail "$3: the output differs from the reference"
}
out="$(run)"
expect "$out" "weights: 0 of 8 experts .* 8 loaded from the checkpoint" "a first run loads every expert"
[ "$(stat -c %a "$cache")" = 700 ] || fail "the cache directory is not private"
out="$(run)"
expect "$out" "weights: 8 of 8 experts .* 0 loaded from .*0 entries unusable" "a relaunch reads every expert back"
rm -f "$cache"/*experts.5.*
printf 'junk' > "$cache/model.layers.0.mlp.experts.2.down_proj.weight.moexw"
out="$(run)"
expect "$out" "weights: 6 of 8 experts .* 2 loaded from .*1 entries unusable" "only the removed and the corrupt experts are loaded"
echo "$out" | grep -Eq "rank [0-9]: warning: weight cache entry not used: .*experts.2.down_proj.*not a moex weight cache entry" ||
  fail "the corrupt entry is not named"
out="$(run)"
expect "$out" "weights: 8 of 8 experts" "the reloaded experts were put back"
echo "weight cache: OK"
