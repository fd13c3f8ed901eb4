#!/usr/bin/env bash
# control_slurm_test.sh NAME MOEX: `moex serve --launcher slurm` on a private
# Slurm (slurm.sh) over a cluster NAME of its own (2 hosts x 2 CPUs):
#  - a 4-rank job (2 a host) SUCCEEDED with ranks on both hosts, the output
#    check passing, the Slurm job id on its attempt;
#  - cancel leaves nothing in squeue and no process of the job on any host;
#  - a controller killed (SIGKILL) and restarted re-adopts a running Slurm job,
#    which then SUCCEEDS;
#  - a whole host lost mid-run is named with its ranks within the heartbeat
#    timeout, and the job relaunches without it (srun --exclude) and SUCCEEDS;
#  - an unknown partition and a missing srun: each a clear error at start;
#    a host Slurm does not have: a clear error at submit.
set -euo pipefail
name="$1"
moex_binary="$2"
source "$(dirname "$0")/test_lib.sh"
SLURM="$(dirname "$VCLUSTER")/slurm.sh"
"$VCLUSTER" check >/dev/null || exit 77
rc=0
"$SLURM" check >/dev/null || rc=$?
((rc != 77)) || exit 77
set -- "$moex_binary"
source "$(dirname "$0")/../../chaos/chaos_lib.sh"
source "$(dirname "$0")/control_lib.sh"
trap 'CHAOS_FAILED=$([ $? -ne 0 ] && echo 1 || echo 0); chaos_cleanup; "$SLURM" down "$name" >/dev/null || true; "$VCLUSTER" down "$name" >/dev/null' EXIT
"$SLURM" down "$name" >/dev/null
"$VCLUSTER" up --replace "$name" 2 2 >/dev/null
"$SLURM" up "$name" >/dev/null
while IFS= read -r line; do export "${line?}"; done < <("$SLURM" env "$name")
bridge="$("$VCLUSTER" mpirun-args "$name" | sed -n 's|^\([0-9.]*\)\.0/24$|\1.1|p' | head -1)"
[[ -n "$bridge" ]] || fail "no bridge address"
h0="$name-h0" h1="$name-h1"

# --- what is refused ----------------------------------------------------------
out="$(timeout 20 "$moex" serve --listen 0.0.0.0:0 --insecure --advertise "$bridge" --state-dir "$work/refused" \
       --launcher slurm --slurm-partition gpu 2>&1 || true)"
grep -q "slurm-partition 'gpu' is not a partition of this Slurm cluster (it has vc, small)" <<<"$out" ||
  fail "an unknown partition is not refused: $out"
out="$(timeout 20 env PATH=/nonexistent "$moex" serve --listen 0.0.0.0:0 --insecure --advertise "$bridge" \
       --state-dir "$work/refused" --launcher slurm 2>&1 || true)"
grep -q "launcher slurm: 'srun' is not on PATH" <<<"$out" || fail "a missing srun is not named: $out"
echo "refused at start: an unknown partition, a missing srun"

slurm_flags=(--launcher slurm --slurm-partition vc --slurm-time-limit 10)
serve_cluster 1 "${slurm_flags[@]}"
out="$("$moex" job submit --world-size 4 --model tiny --hosts "$name-h7" 2>&1 || true)"
grep -q "spec.hosts: '$name-h7' is not a node of partition vc" <<<"$out" || fail "an unknown host is not refused: $out"

# 1. a job over both hosts, 2 ranks a host
id="$(submit --name slurm --world-size 4 --ranks-per-host 2 --model tiny --steps 20 --tokens-per-rank 64 --check)"
succeeded_two_per_host "$id" "the Slurm job"
slurm_job="$(field "$id" "j['attempts'][0].get('launcher_job_id', '')")"
[[ "$slurm_job" =~ ^[0-9]+$ ]] || fail "the attempt has no Slurm job id: '$slurm_job'"
[ "$(field "$id" "j['attempts'][0].get('launcher', '')")" = slurm ] || fail "the attempt does not say it ran through Slurm"
echo "ran as Slurm job $slurm_job"

# 2. cancel: nothing in squeue, nothing on any host
id="$(submit --name cancel --world-size 4 --model tiny --steps 100000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 3" 60
"$moex" job cancel "$id" >/dev/null
wait_for "$id" "j['state'] == 'JOB_STATE_CANCELLED'" 30
for _ in $(seq 100); do [[ -z "$(squeue -h --name "moex-$id-a1")" ]] && break; sleep 0.1; done
[[ -z "$(squeue -h --name "moex-$id-a1")" ]] || fail "the cancelled job is still in squeue: $(squeue --name "moex-$id-a1")"
wait_cleanup "$id"
assert_no_orphans "$id"
echo "cancelled: nothing in squeue, no process on any host"

# 3. the controller killed and restarted: the running Slurm job is re-adopted
id="$(submit --name adopt --world-size 4 --model tiny --steps 3000 --tokens-per-rank 64)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 5" 60
kill -9 "$serve"
wait "$serve" 2>/dev/null || true
serve_cluster 2 "${slurm_flags[@]}"
wait_for "$id" "'re-adopted' in j.get('message', '') or j['state'] == 'JOB_STATE_SUCCEEDED'" 30
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 120
[ "$(field "$id" "j['state']")" = JOB_STATE_SUCCEEDED ] || fail "the re-adopted job did not succeed: $(field "$id" "j['message']")"
echo "re-adopted after a controller restart: $(field "$id" "j['message']")"

# 4. a whole host lost: named, and the job relaunches without it
id="$(submit --name lost --world-size 4 --ranks-per-host 2 --model tiny --steps 1500 --tokens-per-rank 64 --check \
      --redundant-experts 8 --max-restarts 1 --allow-shrink --exchange-timeout 30)"
wait_for "$id" "int(m.get('steps_done', 0)) >= 5" 60
t0="$(now_ms)"
"$VCLUSTER" lose "$name" h1
wait_for "$id" "len(j.get('attempts', [])) == 2" 30
detected="$(field "$id" "'%.1f' % ((int(j['attempts'][0]['end_time_unix_ms']) - $t0) / 1000.0)")"
ended="$(field "$id" "j['attempts'][0]['ended']")"
grep -Eq "host $h1 was lost(: ranks 2, 3 \(every rank on it\)| \(ranks 2, 3, every rank on it\))" <<<"$ended" ||
  fail "attempt 1 does not name the lost host and its ranks: $ended"
wait_for "$id" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 120
"$moex" job status "$id" | grep -v "^  log:"
[ "$(field "$id" "j['state'] + ' ' + str(set(r['host'] for r in j['ranks']) == {'$h0'})")" = "JOB_STATE_SUCCEEDED True" ] ||
  fail "the job did not recover on $h0: $(field "$id" "j['message']")"
echo "lost host: $h1 named after ${detected} s (heartbeat timeout 6 s), recovered on $h0 as Slurm job $(field "$id" "j['attempts'][1].get('launcher_job_id', '')")"
echo "PASS"
