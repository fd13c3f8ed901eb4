#!/usr/bin/env bash
# A rank that cannot reach the controller at start: the job fails at the
# start timeout, naming the rank that never registered.
source "$(dirname "$0")/chaos_lib.sh"
export MOEX_FAULT_UNREACHABLE_RANK=1
start_controller --start-timeout 4
t0="$(now_ms)"
id="$(submit --name chaos --world-size 2 --model tiny --steps 5)"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 30
assert_message "$id" "rank.* 1|1 .*rank"
assert_no_orphans "$id"
record unreachable_controller 6 "$(detected_s "$id" "$t0")" "FAILED at the 4 s start timeout naming rank 1; no process left"
