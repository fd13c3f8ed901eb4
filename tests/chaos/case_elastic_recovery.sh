#!/usr/bin/env bash
# Elastic recovery: a job that may restart loses a rank (SIGKILL) mid-run.
#  - with allow_shrink and enough slots on the survivors: relaunched on 3 of
#    4 ranks on a placement planned for them, resumed after the last step
#    reported, SUCCEEDED, and its output still equals the single-process
#    reference (--check); the attempts are on record;
#    the relaunched ranks read back from the host's weight cache what is
#    still there and load only what is missing (the entries of experts 0-7
#    are removed before the kill, as if their host had died);
#  - with its one restart spent: the second loss fails the job, saying so.
source "$(dirname "$0")/chaos_lib.sh"
start_controller --heartbeat-timeout 10
id="$(submit --name elastic --world-size 4 --model mini-dsv3 --steps 150 --tokens-per-rank 128 --check \
      --redundant-experts 64 --routing-skew 1.2 --max-restarts 2 --allow-shrink)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 10" 90
done_before="$(field "$id" "int(m.get('steps_done', 0))")"
[ "$done_before" -lt 150 ] || fail "the job ended before the fault"
cache="/dev/shm/moex-weights-$(id -u)-$id"
[ "$(ls "$cache" | grep -c 'experts\.[0-9]*\..*\.moexw$')" -ge 192 ] || fail "the ranks did not fill the weight cache $cache"
rm -f "$cache"/*experts.[0-7].*
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
# ... and as data: its reason and the rank lost, what the survivors reported.
[ "$(field "$id" "j['attempts'][0].get('reason') == 'END_REASON_RANK_LOST' and j['attempts'][0].get('lost_ranks') == [1]")" = True ] ||
  fail "attempt 1 does not carry its reason and lost rank as fields: $(field "$id" "j['attempts'][0]")"
reported="$(field "$id" "', '.join('rank %d waiting for %s' % (f.get('rank', 0), f.get('waiting_for', [])) for f in j['attempts'][0].get('rank_failures', []))")"
echo "attempt 1's rank reports: ${reported:-none}"
[ "$(field "$id" "int(j['attempts'][1].get('first_step', 0)) >= $done_before")" = True ] ||
  fail "attempt 2 did not resume after the steps done"
[ "$(field "$id" "float(m['check_relative_error']) < 1e-4")" = True ] || fail "the output after recovery differs from the reference"
assert_no_orphans "$id"
# Attempt 1 loaded every expert at least once (a replica on another rank may
# read back what the first rank put); attempt 2 read back what the cache
# held and loaded the rest: at least the 8 experts removed, not much more.
# "Held" counts distinct experts per rank, summed over the ranks.
loads="$(field "$id" "'\\n'.join('%s %s %s' % (a.get('experts_from_cache', 0), int(a.get('experts_from_cache', 0)) + int(a.get('experts_loaded', 0)), a.get('experts_loaded', 0)) for a in j['attempts'])")"
echo "weight loads per attempt (read from the cache, held, loaded): $(echo $loads)"
[ "$("$moex" job logs "$id" | grep -c 'moex run: weights: ')" = 2 ] || fail "expected one weights line per attempt in the log"
read -r hit1 held1 loaded1 <<< "$(echo "$loads" | sed -n 1p)"
read -r hit2 held2 loaded2 <<< "$(echo "$loads" | sed -n 2p)"
[ "$loaded1" -ge 64 ] && [ $((hit1 + loaded1)) = "$held1" ] || fail "attempt 1 should have loaded every expert: $loads"
[ "$loaded2" -ge 8 ] && [ "$loaded2" -le 24 ] && [ $((hit2 + loaded2)) = "$held2" ] ||
  fail "attempt 2 should read back what the cache held and load only what was removed: $loads"
[ ! -e "$cache" ] || fail "the weight cache $cache outlived the job"
resumed="$(field "$id" "int(j['attempts'][1].get('first_step', 0))")"
record elastic_shrink_and_resume 15 "$recovered" "relaunched on 3 of 4 ranks (from the kill to RUNNING again), resumed after step $resumed of 150, read $hit2 of its $held2 experts back from the host cache and loaded $loaded2 (experts 0-7 removed before the kill; attempt 1 loaded $loaded1 of $held1), SUCCEEDED, output equal to the reference"

# No restart left: the second loss is final.
id="$(submit --name last --world-size 2 --model mini-dsv3 --steps 100000 --tokens-per-rank 64 --max-restarts 1)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 90
kill -9 "$(rank_pid "$id" 0)"
wait_for "$id" "len(j.get('attempts', [])) == 2 and j['state'] == 'JOB_STATE_RUNNING'" 60
t0="$(now_ms)"
kill -9 "$(rank_pid "$id" 1)"
wait_for "$id" "j['state'] == 'JOB_STATE_FAILED'" 30
assert_message "$id" "rank 1.*attempt 2 of 2: no restart left"
[ "$(field "$id" "j.get('end_reason')")" = END_REASON_RANK_LOST ] || fail "the job's end reason is not RANK_LOST: $(field "$id" "j.get('end_reason')")"
assert_no_orphans "$id"
record restarts_exhausted 5 "$(detected_s "$id" "$t0")" "FAILED naming rank 1 and that no restart is left; 2 attempts on record"
