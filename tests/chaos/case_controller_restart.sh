#!/usr/bin/env bash
# The controller killed (SIGKILL) while a job runs and started again on the
# same state dir and port: the job is re-adopted and goes on; nothing lost.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 10
id="$(submit --name chaos --world-size 2 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
at_kill="$(field "$id" "int(m.get('steps_done', 0))")"
kill -9 "$serve"; wait "$serve" 2>/dev/null || true
killed_at="$(now_ms)"
before="$("$moex" job list --json 2>/dev/null | wc -c || true)"
sleep 2
t0="$(now_ms)"
start_controller --heartbeat-timeout 10
steps="$(field "$id" "int(m.get('steps_done', 0))")"
wait_for "$id" "j['state'] == 'JOB_STATE_RUNNING' and int(m.get('steps_done', 0)) > $steps" 30
readopted="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
# The ranks went on while no controller answered: rank 0's first report
# after the restart counts the steps run meanwhile (reports are sent from a
# thread of their own; a blocking report paced a tiny job at ~4 steps/s),
# and the rank said so once, not once a step.
after="$(field "$id" "int(m.get('steps_done', 0))")"
outage_s="$(python3 -c "print('%.1f' % (($(now_ms) - $killed_at) / 1000.0))")"
(( after - at_kill >= 100 )) ||
  fail "the job ran $((after - at_kill)) steps in the ${outage_s} s without a controller (from step $at_kill): reports block the steps"
said="$("$moex" job logs "$id" | grep -c 'cannot report step' || true)"
[ "$said" -le 1 ] || fail "rank 0 said $said times that it cannot report (once a spell): $("$moex" job logs "$id" | grep 'cannot report step' | head -3)"
"$moex" job cancel "$id" > /dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 20
assert_no_orphans "$id"
[ "$("$moex" job list | grep -c "$id")" = 1 ] || fail "the job is not listed after the restart"
record controller_restart 10 "$readopted" "re-adopted, reporting steps again ($((after - at_kill)) steps run in the ${outage_s} s from the kill to the report seen, one line said); cancelled cleanly; record kept"
