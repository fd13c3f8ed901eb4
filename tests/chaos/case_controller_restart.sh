#!/usr/bin/env bash
# The controller killed (SIGKILL) while a job runs and started again on the
# same state dir and port: the job is re-adopted and goes on; nothing lost.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 10
id="$(submit --name chaos --world-size 2 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
kill -9 "$serve"; wait "$serve" 2>/dev/null || true
before="$("$moex" job list --json 2>/dev/null | wc -c || true)"
sleep 2
t0="$(now_ms)"
start_controller --heartbeat-timeout 10
steps="$(field "$id" "int(m.get('steps_done', 0))")"
wait_for "$id" "j['state'] == 'JOB_STATE_RUNNING' and int(m.get('steps_done', 0)) > $steps" 30
readopted="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
"$moex" job cancel "$id" > /dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 20
assert_no_orphans "$id"
[ "$("$moex" job list | grep -c "$id")" = 1 ] || fail "the job is not listed after the restart"
record controller_restart 10 "$readopted" "re-adopted, reporting steps again; cancelled cleanly; record kept"
