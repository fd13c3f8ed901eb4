#!/usr/bin/env bash
# A rank killed with SIGKILL as it starts moving experts to a new placement:
# FAILED, naming the rank; the rebalance stays on record, never served.
source "$(dirname "$0")/chaos_lib.sh"
export MOEX_FAULT_KILL_MIGRATION_RANK=1
start_controller --heartbeat-timeout 3
id="$(submit --name chaos --world-size 2 --model tiny --steps 100000 --redundant-experts 2 --routing-skew 1.2)"
wait_for "$id" "int(j.get('load', {}).get('window_steps', 0)) >= 1" 60
t0="$(now_ms)"
"$moex" job rebalance "$id" | grep -q "placement version 2 published" || fail "the rebalance was not published"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 20
assert_message "$id" "rank 1"
[ "$(field "$id" "[int(r.get('live_at_step', 0)) for r in j['rebalances']] == [0]")" = True ] ||
  fail "the rebalance record is missing or claims to have served"
assert_no_orphans "$id"
record kill_rank_mid_migration 5 "$(detected_s "$id" "$t0")" "FAILED naming rank 1; rebalance v2 on record, never served; no process left"
