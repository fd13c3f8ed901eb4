#!/usr/bin/env bash
# The controller's state dir unwritable, or its disk full:
#  - a state dir that cannot be created or written: `moex serve` refuses to
#    start, naming it;
#  - the disk fills while a job runs: new submissions are refused with the
#    reason (nothing launched, nothing half-recorded), the running job goes
#    on and its record is written again once there is space; after a restart
#    every job is still there.
# The disk-full part mounts a 2 MiB tmpfs (root only); it is skipped (exit
# 77) where mounting is not allowed.
source "$(dirname "$0")/chaos_lib.sh"

t0="$(now_ms)"
if "$moex" serve --listen 127.0.0.1:0 --state-dir /dev/null/state > "$work/refused.out" 2>&1; then
  fail "moex serve started on /dev/null/state"
fi
took="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
grep -q "/dev/null/state" "$work/refused.out" || fail "the refusal does not name the state dir: $(cat "$work/refused.out")"
echo "  $(cat "$work/refused.out")"
record unwritable_state_dir 2 "$took" "moex serve exits non-zero naming the state dir"

chaos_mount="$work/small"
mkdir -p "$chaos_mount"
if ! mount -t tmpfs -o size=2m tmpfs "$chaos_mount" 2>/dev/null; then
  chaos_mount=""
  echo "SKIP: cannot mount a tmpfs here (not root?): the disk-full case did not run"
  exit 77
fi
state_dir="$chaos_mount/state"
start_controller --heartbeat-timeout 10
id="$(submit --name chaos --world-size 2 --model tiny --steps 100000 --tokens-per-rank 16)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 2" 60
dd if=/dev/zero of="$chaos_mount/filler" bs=4k 2>/dev/null || true   # until the disk is full
t0="$(now_ms)"
if "$moex" job submit --world-size 2 --model tiny --steps 2 2> "$work/err"; then fail "a job was accepted on a full disk"; fi
took="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
echo "  $(cat "$work/err")"
grep -q "cannot record the job in the state dir" "$work/err" || fail "the refusal does not say why"
[ "$("$moex" job list | grep -c "$id")" = 1 ] || fail "the controller stopped answering on a full disk"
steps="$(field "$id" "int(m.get('steps_done', 0))")"
wait_for "$id" "j['state'] == 'JOB_STATE_RUNNING' and int(m.get('steps_done', 0)) > $steps" 30
record disk_full_submit 2 "$took" "submit refused naming the state dir, nothing launched; the running job goes on"
rm -f "$chaos_mount/filler"
sleep 2  # the monitor loop writes the job's record again
id2="$(submit --name after --world-size 2 --model tiny --steps 2)"
wait_for "$id2" "j['state'] == 'JOB_STATE_SUCCEEDED'" 60
"$moex" job cancel "$id" > /dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 20
kill -TERM "$serve"; wait "$serve" 2>/dev/null || true
start_controller
for j in "$id" "$id2"; do "$moex" job status "$j" > /dev/null || fail "job $j was lost across the restart"; done
[ "$(field "$id" "j['state']")" = JOB_STATE_CANCELLED ] || fail "job $id's record is stale after the disk filled"
assert_no_orphans "$id"
# A record torn on disk: the controller starts anyway, moves it aside (bytes
# intact, in jobs.db's quarantine table) and names it; the others load.
kill -TERM "$serve"; wait "$serve" 2>/dev/null || true
python3 -c "
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute('UPDATE jobs SET record = ? WHERE id = ?', (b'\\x00\\x00torn', sys.argv[2]))
db.commit()" "$state_dir/jobs.db" "$id2"
t0="$(now_ms)"
start_controller
took="$(python3 -c "print('%.2f' % (($(now_ms) - $t0) / 1000.0))")"
grep -q "job $id2 (6 bytes): the record does not parse.*quarantine" "$work/serve.out" ||
  fail "the corrupt record is not named: $(cat "$work/serve.out")"
[ "$(field "$id" "j['state']")" = JOB_STATE_CANCELLED ] || fail "the other job did not load beside a corrupt record"
if "$moex" job status "$id2" > /dev/null 2>&1; then fail "the corrupt record was served"; fi
kept="$(python3 -c "
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute('SELECT count(*) FROM quarantine WHERE id = ?', (sys.argv[2],)).fetchone()[0])" \
  "$state_dir/jobs.db" "$id2")"
[ "$kept" = 1 ] || fail "the corrupt record was not kept in the quarantine table"
record corrupt_record 5 "$took" "the controller started, named the torn record and kept it in the quarantine table; the other jobs loaded"
echo "state dir: ok"
