#!/usr/bin/env bash
# What a job leaves in /dev/shm after it ends, whatever the ending: nothing.
# Each rank records, on its host, the shared-memory segments it maps
# (/dev/shm/moex-job-<uid>-<job>/attempt-A.rank-R); the controller has the
# job's hosts cleaned (launcher/host_cleanup.h) when an attempt or the job
# ends. Checked on the names the job's ranks map (read from /proc here) and
# recorded, and on the /dev/shm listing: every Open MPI segment of the job's
# Open MPI job (those names' prefix) must be gone, as must the job's weight
# cache and record directory.
#  1. a rank stopped, the job relaunched at the heartbeat timeout: the first
#     attempt's segments go while the second runs (the weight cache stays);
#     a rank of the second SIGKILLed, no restart left: FAILED, and
#     everything goes;
#  2. a job whose every process is stopped (SIGSTOP), then cancelled;
#  3. the controller stopped (SIGTERM) while a job runs.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 3 --cancel-grace 1
uid="$(id -u)"
jobdir() { echo "/dev/shm/moex-job-$uid-$1"; }
cache() { echo "/dev/shm/moex-weights-$uid-$1"; }

# snapshot ID ATTEMPT N: once the N ranks of ATTEMPT (the running one) map their Open MPI
# segments, sets $snap to the job's names: what its ranks map (read here
# from /proc/<pid>/maps, whatever moex does), what they recorded, and every
# file in /dev/shm sharing such a segment's prefix
# (`vader_segment.<host>.<fam>.<jobid>.`: that Open MPI job's, any rank).
# A mapped segment the ranks did not record is noted in $unrecorded.
unrecorded=""
snapshot() {
  local mapped="" recorded="" prefix
  for _ in $(seq 100); do
    mapped="$(for pid in $(pgrep -f "worker --job-id $1 " || true); do
                grep -o '/dev/shm/vader_segment\.[^ ]*$' "/proc/$pid/maps" 2>/dev/null || true
              done | sort -u)"
    [ "$(sed -n 's/.*\.\([0-9]*\)$/\1/p' <<<"$mapped" | sort -u | grep -c .)" -ge "$3" ] && break
    sleep 0.1
  done
  [ "$(sed -n 's/.*\.\([0-9]*\)$/\1/p' <<<"$mapped" | sort -u | grep -c .)" -ge "$3" ] ||
    fail "job $1: its $3 ranks of attempt $2 do not map their Open MPI segments: $mapped"
  sleep 0.2  # the ranks record right after MPI_Init: long done by the first steps
  recorded="$(cat "$(jobdir "$1")"/attempt-"$2".rank-* 2>/dev/null | sort -u || true)"
  unrecorded="$unrecorded $(comm -23 <(echo "$mapped") <(echo "$recorded") | tr '\n' ' ')"
  snap="$( { echo "$mapped"; echo "$recorded"
             for prefix in $(sed -n 's|^/dev/shm/\(vader_segment\..*\.\)[0-9]*$|\1|p' <<<"$mapped" | sort -u); do
               ls /dev/shm | grep -F "$prefix" | sed 's|^|/dev/shm/|'
             done; } | grep -v '^$' | sort -u || true)"
}
# gone WHAT PATHS...: until none of PATHS exists (5 s), or fail.
gone() {
  local what="$1" left
  shift
  for _ in $(seq 50); do
    left="$(for p in "$@"; do [ -e "$p" ] && echo "$p"; done || true)"
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  fail "$what: still there 5 s later: $(echo $left)"
}
exists() { for p in "$@"; do [ -e "$p" ] || fail "$p does not exist"; done; }
# mpi SEGMENTS: Open MPI's, which live as long as the ranks (moex's own are
# unlinked as soon as every rank mapped them: recorded, gone already).
mpi() { grep vader_segment <<<"$1" || true; }

# 1. A rank stopped (heartbeat timeout: relaunched), then a rank SIGKILLed
#    with no restart left.
id="$(submit --name leftovers --world-size 3 --model tiny --steps 100000 --tokens-per-rank 64 --max-restarts 1)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
snapshot "$id" 1 3
first="$snap"
echo "attempt 1: $(echo $first)"
exists $(mpi "$first") "$(cache "$id")"
kill -STOP "$(rank_pid "$id" 2)"
wait_for "$id" "len(j.get('attempts', [])) == 2 and j['state'] == 'JOB_STATE_RUNNING'" 60
gone "attempt 1 of $id, relaunched" $first
exists "$(cache "$id")" "$(jobdir "$id")"
snapshot "$id" 2 3
second="$snap"
echo "attempt 2: $(echo $second)"
exists $(mpi "$second")
kill -9 "$(rank_pid "$id" 1)"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 20
t0="$(now_ms)"
assert_message "$id" "no restart left"
gone "job $id, FAILED" $first $second "$(cache "$id")" "$(jobdir "$id")"
cleaned_s="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
grep -q "moex serve: cleanup of attempt 1 of job $id on .*: removed [1-9]" "$(field "$id" "j['log_path']")" ||
  fail "the job's log does not tell attempt 1's cleanup"
assert_no_orphans "$id"

# 2. Every process stopped, then cancelled.
id="$(submit --name stopped --world-size 2 --model tiny --steps 100000 --tokens-per-rank 64 --max-restarts 1)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
snapshot "$id" 1 2
stopped="$snap"
exists $(mpi "$stopped") "$(cache "$id")"
for pid in $(pgrep -f "job-id $id"); do kill -STOP "$pid" 2>/dev/null || true; done
"$moex" job cancel "$id" > /dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 20
gone "job $id, stopped and cancelled" $stopped "$(cache "$id")" "$(jobdir "$id")"
assert_no_orphans "$id"

# 3. The controller stopped while a job runs: cleaned before it exits.
id="$(submit --name shutdown --world-size 2 --model tiny --steps 100000 --tokens-per-rank 64 --max-restarts 1)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
snapshot "$id" 1 2
running="$snap"
exists $(mpi "$running") "$(cache "$id")"
kill -TERM "$serve"
wait "$serve" || true
serve=""
gone "job $id, controller stopped" $running "$(cache "$id")" "$(jobdir "$id")"
assert_no_orphans "$id"
[ -z "$(echo $unrecorded)" ] || fail "segments the ranks mapped but did not record: $unrecorded"
record shm_leftovers 5 "$cleaned_s" \
  "heartbeat timeout (relaunched) then SIGKILL (FAILED), cancel of a stopped job, controller stop: none of the job's segments, weight cache or record directory left"
