#!/usr/bin/env bash
# A rank killed with SIGKILL while the job steps: FAILED, naming the rank.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 3
id="$(submit --name chaos --world-size 3 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
pid="$(rank_pid "$id" 1)"
t0="$(now_ms)"
kill -9 "$pid"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 20
assert_message "$id" "rank 1"
assert_no_orphans "$id"
record kill_rank_mid_step 5 "$(detected_s "$id" "$t0")" "FAILED naming rank 1; no process left"
