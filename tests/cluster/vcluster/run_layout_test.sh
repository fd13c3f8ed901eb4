#!/usr/bin/env bash
# run_layout_test.sh NAME WORKDIR MOEX LAYOUT TRANSPORT [moex run options...]
# `moex run --check` over the hosts of cluster NAME, LAYOUT ranks per host
# (e.g. 2,2 or 1,2,3: host h0 gets the first, ranks in order): the output must
# equal the single-process reference, and the run must have seen the ranks on
# those hosts, as LAYOUT says (its JSON's dispatch_path_reason names them).
# The path must be the one asked for (--dispatch flat: per peer; otherwise
# hierarchical wherever a host has two ranks or more; all-to-all-v where
# every rank is alone), and the bytes that crossed between hosts must be
# what that path sends: hierarchical, one record (hidden + 2 top-k values)
# per (token, remote host), the floor times (H + 2k) / H exactly; flat, at
# least that. With --dispatch-dtype fp8 the same, at fp8's row size.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2" moex="$3" layout="$4" transport="$5"
shift 5
need_cluster "$name"
mkdir -p "$work"
IFS=, read -r -a per_host <<<"$layout"
flat=0
fp8=0
for arg in "$@"; do
  [[ "$arg" == flat ]] && flat=1
  [[ "$arg" == fp8 ]] && fp8=1
done
tag="${layout//,/-}.$transport"
((flat)) && tag+=".flat"
((fp8)) && tag+=".fp8"
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
max_per_host=0
for n in "${per_host[@]}"; do ((n > max_per_host)) && max_per_host=$n; done
if ((max_per_host == 1)); then path="all-to-all-v"; elif ((flat)); then path="per peer"; else path="hierarchical"; fi
python3 - "$json" "$expected" "$transport" "$np" "$path" "${#per_host[@]}" <<'PY'
import json, sys
path, expected, transport, np = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
want_path, hosts = sys.argv[5], int(sys.argv[6])
run = json.load(open(path))
reason = run["dispatch_path_reason"]
problems = []
summary = run["summary"]
if run["dispatch_path"] != want_path:
    problems.append(f"dispatch path {run['dispatch_path']!r}, expected {want_path!r}")
if summary["hosts"] != hosts:
    problems.append(f"summary.hosts {summary['hosts']}, expected {hosts}")
sent, floor = summary["internode_bytes_per_step"], summary["internode_floor_bytes_per_step"]
H, k = run["hidden"], run["top_k"]
# A row between hosts: 4H bytes in fp32; in fp8, H values (padded to 4) and
# a scale per 128 (--dispatch-dtype fp8); a record adds k (slot, weight) pairs.
dtype = run["dispatch_dtype"]
row = 4 * H if dtype == "fp32" else (H + 3) // 4 * 4 + 4 * ((H + 127) // 128)
if run["wire_row_bytes"] != row:
    problems.append(f"wire_row_bytes {run['wire_row_bytes']} for {dtype} rows of {H}, expected {row}")
record = row + 8 * k
if floor <= 0:
    problems.append(f"internode floor {floor}: nothing crossed between {hosts} hosts?")
elif want_path == "hierarchical" and abs(sent - floor * record / row) > 1e-9 * floor:
    problems.append(f"hierarchical sent {sent} bytes between hosts, not one record per (token, remote host): "
                    f"{floor} x {record} / {row}")
elif sent < floor * record / row:
    problems.append(f"{want_path} sent {sent} bytes between hosts, under the floor {floor} x {record} / {row}")
if expected not in reason:
    problems.append(f"dispatch_path_reason {reason!r} does not say {expected!r}")
if run["world_size"] != np or run["transport"] != transport:
    problems.append(f"world_size {run['world_size']} over {run['transport']}, expected {np} over {transport}")
if not run.get("check_relative_error", 1.0) <= 1e-4:
    problems.append(f"check_relative_error {run.get('check_relative_error')} is over 1e-4")
if problems:
    sys.exit("FAIL: " + "; ".join(problems))
print(f"ok: {dtype} rows, dispatch path '{run['dispatch_path']}' because: {reason}; check error {run['check_relative_error']:.2e}; "
      f"between hosts {sent:.0f} bytes a step for a floor of {floor:.0f} ({sent / floor:.3f}x)")
PY
echo "PASS"
