#!/usr/bin/env bash
# Elastic recovery: a job that may restart loses a rank (SIGKILL) mid-run.
#  - with allow_shrink and enough slots on the survivors: relaunched on 3 of
#    4 ranks on a placement planned for them, resumed after the last step
#    reported, SUCCEEDED, and its output still equals the single-process
#    reference (--check); the attempts are on record;
#  - with its one restart spent: the second loss fails the job, saying so.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 10
id="$(submit --name elastic --world-size 4 --model mini-dsv3 --steps 150 --tokens-per-rank 128 --check \
      --redundant-experts 64 --routing-skew 1.2 --max-restarts 2 --allow-shrink)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 10" 90
done_before="$(field "$id" "int(m.get('steps_done', 0))")"
[ "$done_before" -lt 150 ] || fail "the job ended before the fault"
t0="$(now_ms)"
kill -9 "$(rank_pid "$id" 1)"
wait_for "$id" "len(j.get('attempts', [])) == 2 and j['state'] == 'JOB_STATE_RUNNING'" 60
recovered="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 180
"$moex" job status "$id" | grep -v "^  log:"
[ "$(field "$id" "j['state']")" = JOB_STATE_SUCCEEDED ] || fail "the recovered job did not succeed"
[ "$(field "$id" "int(j['world_size']) == 3 and [a['world_size'] for a in j['attempts']] == [4, 3]")" = True ] ||
  fail "the job did not shrink to the 3 survivors"
[ "$(field "$id" "'rank 1' in j['attempts'][0]['ended']")" = True ] || fail "attempt 1 does not say why it ended"
[ "$(field "$id" "int(j['attempts'][1].get('first_step', 0)) >= $done_before")" = True ] ||
  fail "attempt 2 did not resume after the steps done"
[ "$(field "$id" "float(m['check_relative_error']) < 1e-4")" = True ] || fail "the output after recovery differs from the reference"
assert_no_orphans "$id"
resumed="$(field "$id" "int(j['attempts'][1].get('first_step', 0))")"
record elastic_shrink_and_resume 15 "$recovered" "relaunched on 3 of 4 ranks (from the kill to RUNNING again), resumed after step $resumed of 150, SUCCEEDED, output equal to the reference"

# No restart left: the second loss is final.
id="$(submit --name last --world-size 2 --model mini-dsv3 --steps 100000 --tokens-per-rank 64 --max-restarts 1)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 90
kill -9 "$(rank_pid "$id" 0)"
wait_for "$id" "len(j.get('attempts', [])) == 2 and j['state'] == 'JOB_STATE_RUNNING'" 60
t0="$(now_ms)"
kill -9 "$(rank_pid "$id" 1)"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 30
assert_message "$id" "rank 1.*attempt 2 of 2: no restart left"
assert_no_orphans "$id"
record restarts_exhausted 5 "$(detected_s "$id" "$t0")" "FAILED naming rank 1 and that no restart is left; 2 attempts on record"
