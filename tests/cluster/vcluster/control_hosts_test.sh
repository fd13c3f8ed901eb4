#!/usr/bin/env bash
# control_hosts_test.sh NAME MOEX: `moex serve --launcher mpirun --hostfile`
# on a cluster NAME of its own (2 hosts x 2 slots), ranks reaching the
# controller at its --advertise address over the cluster's network:
#  - a 4-rank job SUCCEEDED with ranks on both hosts, the output check
#    passing, and the status showing ranks by host;
#  - cancel leaves no process of the job on any host and nothing in any
#    host's /dev/shm (the cleanup step ran on each host, through mpirun);
#  - a whole host lost mid-run (every process of it SIGKILLed) fails the
#    attempt naming the host and its ranks; with max_restarts and
#    allow_shrink the job relaunches on the surviving host and SUCCEEDS;
#  - a host's network cut (its processes running): its silent ranks name it
#    within the heartbeat timeout and the job recovers the same way;
#  - a bad hostfile, an mpirun that is missing, a host that is not in the
#    hostfile, a loopback address for remote ranks: each a clear error.
set -euo pipefail
name="$1"
moex_binary="$2"
source "$(dirname "$0")/test_lib.sh"
"$VCLUSTER" check >/dev/null || exit 77
set -- "$moex_binary"
source "$(dirname "$0")/../../chaos/chaos_lib.sh"
source "$(dirname "$0")/control_lib.sh"
trap 'CHAOS_FAILED=$([ $? -ne 0 ] && echo 1 || echo 0); chaos_cleanup; "$VCLUSTER" down "$name" >/dev/null' EXIT
"$VCLUSTER" up --replace "$name" 2 2 >/dev/null
hostfile="$("$VCLUSTER" hostfile "$name")"
mpirun_args="$("$VCLUSTER" mpirun-args "$name" | tr '\n' ' ')"
bridge="$(sed -n 's|.*oob_tcp_if_include \([0-9.]*\)\.0/24.*|\1.1|p' <<<"$mpirun_args")"
[[ -n "$bridge" ]] || fail "no bridge address in: $mpirun_args"
h0="$name-h0" h1="$name-h1"

# --- what is refused at `moex serve` start ---------------------------------
serve_error() {
  local out rc=0
  out="$(timeout 20 "$moex" serve --listen 0.0.0.0:0 --insecure --state-dir "$work/refused" "$@" 2>&1)" || rc=$?
  ((rc == 1)) || fail "moex serve $* exited $rc, not 1: $out"
  echo "$out"
}
printf 'h0 slots=2\nh1 cores=2\n' >"$work/bad-hostfile"
serve_error --hostfile "$work/bad-hostfile" --advertise "$bridge" | grep -q "hostfile $work/bad-hostfile line 2: unknown field 'cores'" ||
  fail "a bad hostfile is not named with its line"
serve_error --mpirun /nonexistent/mpirun | grep -q "'/nonexistent/mpirun' cannot be run" ||
  fail "a missing mpirun is not named"
serve_error --hostfile "$hostfile" | grep -q "ranks on other hosts cannot reach the controller at 0.0.0.0:0" ||
  fail "remote ranks given an unreachable address are not refused"
echo "refused at start: a bad hostfile, a missing mpirun, an address remote ranks cannot reach"

# --- the controller over the cluster ---------------------------------------
serve_cluster 1 --hostfile "$hostfile" --mpirun-args "$mpirun_args"

out="$("$moex" job submit --world-size 4 --model tiny --hosts "$name-h9" 2>&1 || true)"
grep -q "spec.hosts: host '$name-h9' is not in the hostfile" <<<"$out" || fail "an unknown host is not refused: $out"

# 1. a job over both hosts
id="$(submit --name hosts --world-size 4 --model tiny --steps 20 --tokens-per-rank 64 --check)"
succeeded_two_per_host "$id" "the job over two hosts"
"$moex" job status "$id" | grep -q "; $h0: .*; $h1: " || fail "the status does not show ranks by host"

# 2. cancel: nothing left on any host
id="$(submit --name cancel --world-size 4 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
"$moex" job cancel "$id" >/dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 30
# Each host's cleanup is logged as it ends, in either order: wait for both
# (30 s; under a loaded CI machine one can trail the other by seconds).
for _ in $(seq 300); do
  grep -q "cleanup of job $id on $h0" "$state_dir/logs/$id.log" && grep -q "cleanup of job $id on $h1" "$state_dir/logs/$id.log" &&
    break
  sleep 0.1
done
grep "cleanup of job $id" "$state_dir/logs/$id.log" || fail "no cleanup ran for the cancelled job"
grep -q "cleanup of job $id on $h0" "$state_dir/logs/$id.log" && grep -q "cleanup of job $id on $h1" "$state_dir/logs/$id.log" ||
  fail "the cleanup did not run on both hosts"
wait_cleanup "$id"
assert_no_orphans "$id"
for h in h0 h1; do
  left="$("$VCLUSTER" exec "$name" "$h" ls -A /dev/shm)"
  [[ -z "$left" ]] || fail "the cancelled job left in $name-$h's /dev/shm: $left"
done
echo "cancelled: no process left, nothing in either host's /dev/shm"

# 3. a whole host lost: the attempt names it, the job shrinks onto the other host
id="$(submit --name lost --world-size 4 --model tiny --steps 1500 --tokens-per-rank 64 --check \
      --redundant-experts 8 --max-restarts 1 --allow-shrink)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 5" 60
t0="$(now_ms)"
"$VCLUSTER" lose "$name" h1
wait_for "$id" "len(j.get('attempts', [])) == 2" 30
detected="$(field "$id" "'%.1f' % ((int(j['attempts'][0]['end_time_unix_ms']) - $t0) / 1000.0)")"
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 240
"$moex" job status "$id" | grep -v "^  log:"
ended="$(field "$id" "j['attempts'][0]['ended']")"
grep -q "host $h1 was lost (ranks 2, 3, every rank on it)" <<<"$ended" || grep -q "host $h1 was lost: ranks 2, 3" <<<"$ended" ||
  fail "attempt 1 does not name the lost host and its ranks: $ended"
[ "$(field "$id" "j['attempts'][0].get('lost_hosts') == ['$h1']")" = True ] || fail "attempt 1 does not record the lost host"
[ "$(field "$id" "j['state']")" = JOB_STATE_SUCCEEDED ] || fail "the job did not recover on the surviving host"
[ "$(field "$id" "[a['world_size'] for a in j['attempts']] == [4, 2] and set(r['host'] for r in j['ranks']) == {'$h0'}")" = True ] ||
  fail "attempt 2 is not 2 ranks on $h0"
[ "$(field "$id" "float(m['check_relative_error']) < 1e-4")" = True ] || fail "the output after the host loss differs from the reference"
wait_cleanup "$id"
assert_no_orphans "$id"
echo "lost host (processes killed): named after ${detected} s, recorded, recovered on $h0"

# 4. a host's network gone, its processes running: silent heartbeats name it
id="$(submit --name cut --world-size 4 --model tiny --steps 1500 --tokens-per-rank 64 --check \
      --redundant-experts 8 --max-restarts 1 --allow-shrink --exchange-timeout 30)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 5" 60
t0="$(now_ms)"
"$VCLUSTER" cut "$name" h1
wait_for "$id" "len(j.get('attempts', [])) == 2" 30
detected="$(field "$id" "'%.1f' % ((int(j['attempts'][0]['end_time_unix_ms']) - $t0) / 1000.0)")"
ended="$(field "$id" "j['attempts'][0]['ended']")"
grep -q "host $h1 was lost: ranks 2, 3 (every rank on it) sent no heartbeat" <<<"$ended" ||
  fail "attempt 1 does not name the cut-off host and its ranks: $ended"
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 240
[ "$(field "$id" "j['state'] + ' ' + str(set(r['host'] for r in j['ranks']) == {'$h0'})")" = "JOB_STATE_SUCCEEDED True" ] ||
  fail "the job did not recover on $h0 after $h1's network went: $(field "$id" "j['message']")"
"$VCLUSTER" mend "$name" h1
echo "network cut: $h1 named after ${detected} s (heartbeat timeout 6 s), recovered on $h0"
# What ran on the cut-off host cannot be reached through mpirun while it is
# cut off; once back, its ranks find their job gone (FAILED_PRECONDITION on
# their next heartbeat) or their daemon's lifeline cut, and end.
for _ in $(seq 150); do [ "$(pgrep -fc "job-id $id" || true)" = 0 ] && break; sleep 0.2; done
wait_cleanup "$id"
assert_no_orphans "$id"
echo "PASS"
