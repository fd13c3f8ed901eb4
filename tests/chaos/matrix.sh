#!/usr/bin/env bash
# Runs every case of the chaos matrix once and prints the table of
# docs/reliability.md (markdown) from their measured detection times.
#   tests/chaos/matrix.sh build/default/bin/moex
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
moex="$(realpath "$1")"
results="$(mktemp)"
status=0
for c in kill_rank_mid_step kill_rank_mid_migration stopped_rank controller_restart unreachable_controller \
         bad_inputs state_dir elastic_recovery shm_leftovers; do
  echo "== $c" >&2
  bash "$here/case_$c.sh" "$moex" "$results" "$here/../../runtime/model/presets" >&2
  code=$?
  [ $code = 0 ] || [ $code = 77 ] || { echo "case $c FAILED ($code)" >&2; status=1; }
done
python3 - "$results" <<'PY'
import json, sys
print("| case | bound | detected | outcome |")
print("|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['case']} | {r['bound_s']} s | {r['detected_s']:.2f} s | {r['outcome']} |")
PY
rm -f "$results"
exit $status
