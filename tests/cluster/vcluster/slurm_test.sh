#!/usr/bin/env bash
# slurm_test.sh NAME WORKDIR MOEX: a private Slurm (slurm.sh) on a vcluster of
# its own (2 hosts x 2 CPUs) runs what a launcher will ask of it:
#   (a) srun -N2 -n2 hostname prints both hosts;
#   (b) mpirun inside salloc -N2 -n4 (Open MPI starts its daemons with srun)
#       puts two ranks on each host;
#   (c) srun --mpi=pmix -N2 -n4 `moex run --check`: passes, on 2 hosts;
#   (d) sbatch --parsable jobs end COMPLETED, FAILED, CANCELLED (scancel of a
#       running job leaves nothing in squeue nor on any host) and NODE_FAIL
#       (a host lost mid-job: vcluster.sh lose); a job that may be requeued
#       goes back to PENDING instead; the lost host's slurmd started again
#       brings the node back idle.
# Prints what `scontrol show job -o` says of each end state, and timings.
# Brings both up and always takes both down.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2" moex="$3"
SLURM="$(dirname "$VCLUSTER")/slurm.sh"
rc=0
"$SLURM" check >/dev/null || rc=$?
((rc != 77)) || exit 77
((rc == 0)) || fail "slurm.sh check failed (exit $rc)"
mkdir -p "$work"
# shellcheck disable=SC2064
trap "'$SLURM' down '$name' >/dev/null || true; '$VCLUSTER' down '$name' >/dev/null" EXIT
"$SLURM" down "$name" >/dev/null  # a crashed run's
"$VCLUSTER" up --replace "$name" 2 2 >/dev/null
h0="$name-h0" h1="$name-h1"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
t_start="$(now_ms)"
"$SLURM" up "$name"
echo "ok: slurm.sh up in $(($(now_ms) - t_start)) ms"
while IFS= read -r line; do export "${line?}"; done < <("$SLURM" env "$name")

# The fields of `scontrol show job -o` that say how a job ended.
job_state() {
  scontrol show job -o "$1" | tr ' ' '\n' | grep -E '^(JobState|Reason|ExitCode|Restarts)=' | tr '\n' ' ' | sed 's/ $//'
}

# Until job $1 leaves PENDING/RUNNING/COMPLETING (or $2 s pass); prints its state.
wait_end() {
  local job="$1" deadline=$((SECONDS + $2)) state
  while true; do
    state="$(job_state "$job")"
    case "$state" in
      *JobState=PENDING* | *JobState=RUNNING* | *JobState=COMPLETING* | *JobState=CONFIGURING*) ;;
      *) echo "$state"; return 0 ;;
    esac
    ((SECONDS < deadline)) || { echo "$state"; return 1; }
    sleep 0.1
  done
}

# Processes (not zombies) whose command line starts with $1.
live() {
  local pid
  for pid in $(pgrep -f "^$1" || true); do
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[RSDT]$ ]] && echo "$pid"
  done
  return 0
}

# Until $2 processes named $1 run (each task of a step), or 20 s pass.
wait_tasks() {
  local deadline=$((SECONDS + 20))
  until (($(live "$1" | wc -l) == $2)); do
    ((SECONDS < deadline)) || fail "$2 tasks '$1' did not start: $(live "$1" | wc -l) run"
    sleep 0.1
  done
}

# (a) srun.
t="$(now_ms)"
out="$(timeout 30 srun -N2 -n2 hostname | sort | tr '\n' ' ')"
[[ "$out" == "$h0 $h1 " ]] || fail "srun -N2 -n2 hostname printed: $out"
echo "ok: (a) srun -N2 -n2 hostname: $out($(($(now_ms) - t)) ms)"

# (b) mpirun in an allocation: the vcluster's options less the rsh agent.
mapfile -t margs < <("$SLURM" mpirun-args "$name")
t="$(now_ms)"
out="$(timeout 60 salloc -N2 -n4 mpirun "${margs[@]}" --map-by slot hostname 2>"$work/slurm-salloc.err" \
  | sort | tr '\n' ' ')" || { cat "$work/slurm-salloc.err"; fail "salloc -N2 -n4 mpirun hostname failed"; }
[[ "$out" == "$h0 $h0 $h1 $h1 " ]] || { cat "$work/slurm-salloc.err"; fail "salloc -N2 -n4 mpirun hostname printed: $out"; }
echo "ok: (b) salloc -N2 -n4 mpirun ${margs[*]} --map-by slot hostname: $out($(($(now_ms) - t)) ms)"

# (c) srun --mpi=pmix of moex run itself.
json="$work/slurm-run.json"
log="$work/slurm-run.log"
rm -f "$json"
t="$(now_ms)"
timeout 120 srun --mpi=pmix -N2 -n4 "$moex" run --quiet --timeout 30 --model tiny --tokens-per-rank 64 \
  --steps 2 --check --json "$json" >"$log" 2>&1 || { cat "$log"; fail "srun --mpi=pmix -N2 -n4 moex run failed"; }
elapsed=$(($(now_ms) - t))
grep -qE "check: .* PASS" "$log" || { cat "$log"; fail "no passing check in moex run's output"; }
python3 - "$json" "4 ranks on 2 hosts: $h0 (ranks 0, 1), $h1 (ranks 2, 3)" <<'PY' || fail "moex run's JSON: see above"
import json, sys
run = json.load(open(sys.argv[1]))
problems = []
if run["summary"]["hosts"] != 2: problems.append(f"summary.hosts {run['summary']['hosts']}, expected 2")
if run["world_size"] != 4: problems.append(f"world_size {run['world_size']}, expected 4")
if sys.argv[2] not in run["dispatch_path_reason"]:
    problems.append(f"dispatch_path_reason {run['dispatch_path_reason']!r} does not say {sys.argv[2]!r}")
if problems: sys.exit("FAIL: " + "; ".join(problems))
PY
echo "ok: (c) srun --mpi=pmix -N2 -n4 moex run --check: PASS, summary.hosts 2, $h0 (ranks 0, 1), $h1 (ranks 2, 3) (${elapsed} ms)"

# (d) sbatch, and how jobs end.
t="$(now_ms)"
job="$(sbatch --parsable -N2 -n2 -o "$work/slurm-ok.out" --wrap 'srun hostname')"
state="$(wait_end "$job" 30)" || fail "job $job did not end in 30 s: $state"
[[ "$state" == "JobState=COMPLETED Reason=None Restarts=0 ExitCode=0:0" ]] || fail "job $job (srun hostname): $state"
[[ "$(sort "$work/slurm-ok.out" | tr '\n' ' ')" == "$h0 $h1 " ]] || fail "job $job printed: $(cat "$work/slurm-ok.out")"
echo "ok: (d) sbatch --parsable (srun hostname): job $job: $state ($(($(now_ms) - t)) ms from sbatch)"

t="$(now_ms)"
job="$(sbatch --parsable -o /dev/null --wrap 'exit 3')"
state="$(wait_end "$job" 30)" || fail "job $job did not end in 30 s: $state"
[[ "$state" == "JobState=FAILED Reason=NonZeroExitCode Restarts=0 ExitCode=3:0" ]] || fail "job $job (exit 3): $state"
echo "ok: (d) sbatch (exit 3): job $job: $state ($(($(now_ms) - t)) ms from sbatch)"

# scancel of a running two-host job: gone from squeue, and every process of it
# (tasks, slurmstepds, the batch script) gone from both hosts.
task="vslurm-cancel-$$"
job="$(sbatch --parsable -N2 -n2 -o "$work/slurm-cancel.out" --wrap "srun bash -c 'exec -a $task sleep 300'")"
wait_tasks "$task " 2
t="$(now_ms)"
scancel "$job"
deadline=$((SECONDS + 20))
until [[ -z "$(squeue -h -j "$job" 2>/dev/null)" && -z "$(live "$task")" && -z "$(live "slurmstepd: \[$job\.")" ]]; do
  ((SECONDS < deadline)) || fail "20 s after scancel $job: squeue '$(squeue -h -j "$job")', tasks $(live "$task" | tr '\n' ' '), slurmstepds $(live "slurmstepd: \[$job\." | tr '\n' ' ')"
  sleep 0.1
done
gone_ms=$(($(now_ms) - t))
state="$(wait_end "$job" 10)" || fail "job $job still running after scancel: $state"
[[ "$state" == "JobState=CANCELLED Reason=None "* ]] || fail "job $job (scancel): $state"
echo "ok: (d) scancel of running job $job: nothing in squeue nor on any host after ${gone_ms} ms; $state"

# A host lost mid-job: every process of h1 SIGKILLed, slurmd included. One job
# with --no-requeue ends NODE_FAIL; one without is requeued (Slurm's default).
task="vslurm-nodefail-$$"
job="$(sbatch --parsable --no-requeue -N2 -n2 -o "$work/slurm-nodefail.out" --wrap "srun bash -c 'exec -a $task sleep 300'")"
requeued="$(sbatch --parsable -N2 -n2 -o /dev/null --wrap "srun bash -c 'exec -a $task-rq sleep 300'")"
wait_tasks "$task " 2
wait_tasks "$task-rq " 2
t="$(now_ms)"
"$VCLUSTER" lose "$name" h1 >/dev/null
state="$(wait_end "$job" 45)" || fail "job $job did not end in 45 s after losing $h1: $state"
fail_ms=$(($(now_ms) - t))
[[ "$state" == "JobState=NODE_FAIL Reason=NodeDown "* ]] || fail "job $job ($h1 lost): $state"
node="$(sinfo -h -N -p vc -n "$h1" -o '%T %E')"
[[ "$node" == "down* Not responding" ]] || fail "$h1 after its loss: sinfo says '$node'"
deadline=$((SECONDS + 20))
until [[ -z "$(live "$task ")" ]]; do
  ((SECONDS < deadline)) || fail "20 s after NODE_FAIL, job $job's task still runs on $h0: $(live "$task ")"
  sleep 0.1
done
echo "ok: (d) $h1 lost under job $job: $state after ${fail_ms} ms (SlurmdTimeout 5 s); $h1 is '$node'; nothing of it left on $h0"
deadline=$((SECONDS + 10))
until [[ "$(job_state "$requeued")" == *"JobState=PENDING"*"Restarts=1 "* ]]; do
  ((SECONDS < deadline)) || fail "job $requeued (requeue allowed) after losing $h1: $(job_state "$requeued")"
  sleep 0.1
done
echo "ok: (d) job $requeued (requeue allowed) went back to the queue: $(job_state "$requeued")"
scancel "$requeued"
t="$(now_ms)"
"$SLURM" start-node "$name" h1 >/dev/null
echo "ok: (d) $h1's slurmd started again: the node is idle after $(($(now_ms) - t)) ms"

# Down, and nothing of it left.
t="$(now_ms)"
"$SLURM" down "$name"
left="$(pgrep -a -f "${VSLURM_ROOT:-/run/moex-vslurm}/$name/|^vslurm-(cancel|nodefail)-$$" || true)"
[[ -z "$left" ]] || fail "left running after slurm.sh down: $left"
"$VCLUSTER" down --verify "$name" >/dev/null
trap - EXIT
echo "ok: slurm.sh down and vcluster.sh down --verify in $(($(now_ms) - t)) ms; total $(($(now_ms) - t_start)) ms"
echo "PASS"
