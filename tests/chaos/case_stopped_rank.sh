#!/usr/bin/env bash
# A rank stopped with SIGSTOP (alive, silent): caught by its missing
# heartbeats, not waited on; the stopped process is killed too.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 3
id="$(submit --name chaos --world-size 3 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
pid="$(rank_pid "$id" 2)"
t0="$(now_ms)"
kill -STOP "$pid"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 20
assert_message "$id" "rank 2"
assert_no_orphans "$id"
record stopped_rank 5 "$(detected_s "$id" "$t0")" "FAILED naming rank 2 after the 3 s heartbeat timeout; no process left"
