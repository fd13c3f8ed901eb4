#!/usr/bin/env bash
# lost_host_test.sh NAME WORKDIR MOEX TRANSPORT: on a cluster NAME of its own
# (2 hosts x 2 ranks), a whole host is lost mid-run: every process of h1
# SIGKILLed, as a power cut would. The job must end well within its exchange
# deadline (5 s here) and say which host was lost:
# - over UCX, each surviving rank names the rank(s) it was waiting for and
#   their host ("[ranks 2, 3 on host N-h1 (every rank of it)]"): from the
#   transport's error as data, when UCX reports the endpoint lost or the
#   launcher's SIGTERM ends the wait;
# - over MPI (Open MPI's TCP BTL), Open MPI aborts the survivors itself when
#   the peer hangs up, before moex can speak; its message names the host.
# Then nothing of the job may be left in the surviving host's /dev/shm.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2" moex="$3" transport="$4"
"$VCLUSTER" check >/dev/null || exit 77
trap '"$VCLUSTER" down "$name" >/dev/null' EXIT
"$VCLUSTER" up --replace "$name" 2 2 >/dev/null
mkdir -p "$work"
hostfile="$("$VCLUSTER" hostfile "$name" "$work/hostfile-lost-$transport" 2 2)"
log="$work/lost-host-$transport.log"
rm -f "$log"
vmpirun "$name" "$hostfile" 4 "$moex" run --timeout 5 --model tiny --transport "$transport" \
  --tokens-per-rank 64 --steps 1000000 >"$log" 2>&1 &
job=$!
# Lose the host once the job steps.
for _ in $(seq 200); do
  grep -q "^step 3/" "$log" 2>/dev/null && break
  sleep 0.1
done
grep -q "^step 3/" "$log" || { cat "$log"; fail "the job did not reach step 3"; }
t0="$(date +%s%N)"
"$VCLUSTER" lose "$name" h1
rc=0
wait "$job" || rc=$?
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
grep -v "^step " "$log" | tail -20
((rc != 0)) || fail "the job exited 0 after losing a host"
((elapsed_ms < 5000)) || fail "the job took ${elapsed_ms} ms to end after losing a host (deadline 5 s)"
lost_host="$name-h1"
if [[ "$transport" == ucx ]]; then
  # The survivors' error, said once on their host however many said it.
  grep -qE "^moex run: rank [01]: error: .*\[ranks? [0-9, ]+ on host $lost_host " "$log" \
    || fail "no survivor named the lost ranks and their host $lost_host"
else
  # Open MPI names the host that hung up, or (when a survivor's reconnect
  # fails first) only its address.
  lost_address="$("$VCLUSTER" exec "$name" h0 getent hosts "$lost_host" | awk '{print $1}')"
  grep -qE "(Peer host: +$lost_host|on host $lost_host|connect\(\) to ${lost_address//./\\.}:)" "$log" ||
    fail "nothing names the lost host $lost_host (or its address $lost_address)"
fi
left="$("$VCLUSTER" exec "$name" h0 ls -A /dev/shm)"
echo "ended ${elapsed_ms} ms after the loss (exit $rc); left in $name-h0's /dev/shm: ${left:-nothing}"
[[ -z "$left" ]] || fail "the job left in $name-h0's /dev/shm: $left"
echo "PASS"
