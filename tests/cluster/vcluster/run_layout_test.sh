#!/usr/bin/env bash
# run_layout_test.sh NAME WORKDIR MOEX LAYOUT TRANSPORT [moex run options...]
# `moex run --check` over the hosts of cluster NAME, LAYOUT ranks per host
# (e.g. 2,2 or 1,2,3: host h0 gets the first, ranks in order): the output must
# equal the single-process reference, and the run must have seen the ranks on
# those hosts, as LAYOUT says (its JSON's dispatch_path_reason names them).
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2" moex="$3" layout="$4" transport="$5"
shift 5
need_cluster "$name"
mkdir -p "$work"
IFS=, read -r -a per_host <<<"$layout"
tag="${layout//,/-}.$transport"
hostfile="$("$VCLUSTER" hostfile "$name" "$work/hostfile-$tag" "${per_host[@]}")"

# The host map the run must report: "6 ranks on 3 hosts: N-h0 (rank 0), N-h1 (ranks 1, 2), ...".
np=0 hosts=() i=0
for n in "${per_host[@]}"; do
  ranks=""
  for ((r = np; r < np + n; r++)); do ranks+="${ranks:+, }$r"; done
  if ((n == 1)); then hosts+=("$name-h$i (rank $ranks)"); fi
  if ((n > 1)); then hosts+=("$name-h$i (ranks $ranks)"); fi
  np=$((np + n)) i=$((i + 1))
done
expected="$np ranks on ${#hosts[@]} hosts: $(printf '%s, ' "${hosts[@]}" | sed 's/, $//')"

json="$work/run-$tag.json"
rm -f "$json"
log="$work/run-$tag.log"
vmpirun "$name" "$hostfile" "$np" "$moex" run --quiet --timeout 30 --model tiny --transport "$transport" \
  --tokens-per-rank 13 --steps 2 --check --json "$json" "$@" >"$log" 2>&1 \
  || { cat "$log"; fail "moex run over $layout ($transport) exited non-zero"; }
cat "$log"
grep -qE "check: .* PASS" "$log" || fail "no passing check in the output"
python3 - "$json" "$expected" "$transport" "$np" <<'PY'
import json, sys
path, expected, transport, np = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run = json.load(open(path))
reason = run["dispatch_path_reason"]
problems = []
if expected not in reason:
    problems.append(f"dispatch_path_reason {reason!r} does not say {expected!r}")
if run["world_size"] != np or run["transport"] != transport:
    problems.append(f"world_size {run['world_size']} over {run['transport']}, expected {np} over {transport}")
if not run.get("check_relative_error", 1.0) <= 1e-4:
    problems.append(f"check_relative_error {run.get('check_relative_error')} is over 1e-4")
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
print(f"ok: dispatch path '{run['dispatch_path']}' because: {reason}; check error {run['check_relative_error']:.2e}")
PY
echo "PASS"
