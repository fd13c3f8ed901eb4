#!/usr/bin/env bash
# slurm.sh: a private Slurm on a virtual cluster (vcluster.sh), so that
# srun/salloc/sbatch and what launches through them can be tested on one
# machine. Nothing of the machine's own Slurm or munge is used or touched
# (/etc/slurm, /etc/munge, systemd): every file is under the fixture's state.
#
#   slurm.sh check        can it run here? (exit 77 and why, if not)
#   slurm.sh up NAME      on the existing vcluster NAME: a munged of its own,
#                         slurmctld in the root namespace on the bridge address,
#                         one slurmd in each host; waits until every node is idle
#   slurm.sh env NAME     print what a client needs (SLURM_CONF=...), one per line
#   slurm.sh down NAME    stop every daemon of NAME (and what runs under its
#                         slurmstepds), wait for them, remove the state;
#                         idempotent, also on a stale one
#   slurm.sh status NAME  the daemons of NAME and their pids
#   slurm.sh mpirun-args NAME
#                         the mpirun options for a job inside an allocation,
#                         one per line: vcluster.sh's without the rsh agent (under
#                         Slurm, Open MPI starts its daemons with srun)
#   slurm.sh kill-node NAME HOST
#                         SIGKILL HOST's slurmd only (what runs under its
#                         slurmstepds stays, as when a node's daemon dies);
#                         `vcluster.sh lose NAME HOST` loses the whole host
#   slurm.sh start-node NAME HOST
#                         start HOST's slurmd again; waits until the node is idle
#
# HOST is a host name (NAME-h1), or its index (1, h1).
#
# Partitions: `vc` (default) with every host, CPUs = the host's slots; `small`
# with h0 and h1 only (where there are two hosts or more).
#
# State lives in $VSLURM_ROOT/NAME (default /run/moex-vslurm/NAME), apart from
# the vcluster's own state, so that `down` still finds its daemons after the
# vcluster went first. Each daemon's command line names the state folder, and
# `down` finds them from it where a pid file is gone.
set -euo pipefail

readonly VSLURM_ROOT="${VSLURM_ROOT:-/run/moex-vslurm}"
readonly SKIP_CODE=77
readonly UP_DEADLINE_S="${VSLURM_UP_DEADLINE_S:-30}"
# How soon slurmctld decides a silent slurmd's node is down (and fails its jobs).
readonly SLURMD_TIMEOUT_S="${VSLURM_SLURMD_TIMEOUT_S:-5}"
SELF_DIR="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
readonly SELF_DIR
readonly VCLUSTER="$SELF_DIR/vcluster.sh"
readonly VCLUSTER_ROOT="${VCLUSTER_ROOT:-/run/moex-vcluster}"

die() {
  echo "slurm.sh: error: $*" >&2
  exit 1
}

skip() {
  echo "slurm.sh: SKIP: $*" >&2
  exit "$SKIP_CODE"
}

check_name() {
  [[ "$1" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "cluster name '$1' must be 1 to 8 of [a-z0-9], starting with a letter"
}
state_of() { echo "$VSLURM_ROOT/$1"; }

take_lock() {
  mkdir -p "$VSLURM_ROOT"
  exec {LOCK_FD}>"$VSLURM_ROOT/.lock"
  flock "$LOCK_FD"
}

# ---------------------------------------------------------------- check
cmd_check() {
  local tool
  for tool in slurmctld slurmd; do
    command -v "$tool" >/dev/null || skip "no '$tool' on PATH (packages slurmctld, slurmd)"
  done
  for tool in srun salloc sbatch sinfo squeue scontrol scancel; do
    command -v "$tool" >/dev/null || skip "no '$tool' on PATH (package slurm-client)"
  done
  for tool in munged mungekey; do
    command -v "$tool" >/dev/null || skip "no '$tool' on PATH (package munge)"
  done
  "$VCLUSTER" check >/dev/null  # exits 77, saying why, where namespaces cannot be made
  echo "slurm.sh: slurmctld, slurmd, munged and the Slurm clients are here"
}

# ---------------------------------------------------------------- processes
# Running, and not a zombie.
is_running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${stat##*) }" != Z* ]]
}

# The pid in FILE, if that process runs and its command line names WORD (the
# state folder): a pid file left by a crash may name a pid now reused.
pid_from_file() {
  local file="$1" word="$2" pid
  [[ -s "$file" ]] || return 1
  pid="$(tr -dc 0-9 <"$file")"
  [[ -n "$pid" ]] && is_running "$pid" || return 1
  [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$word"* ]] || return 1
  echo "$pid"
}

# Every process of the fixture at STATE: its command line names the state
# folder (the daemons, a batch script) or it works in its log folder (where
# the daemons chdir; slurmctld's child slurmscriptd names nothing else). This
# finds the daemons of a fixture whose pid files are gone.
pids_of_state() {
  local state="$1" proc pid cwd argv
  for proc in /proc/[0-9]*; do
    pid="${proc#/proc/}"
    [[ "$pid" != "$$" && "$pid" != "$BASHPID" ]] || continue
    cwd="$(readlink "$proc/cwd" 2>/dev/null)" || cwd=""
    argv=()
    mapfile -d '' -t argv 2>/dev/null <"$proc/cmdline" || true
    if [[ "$cwd" == "$state/log" || "${argv[*]}" == *"$state/"* ]]; then echo "$pid"; fi
  done
}

# The pids given and all their descendants.
descendants() {
  (($# > 0)) || return 0
  ps -e -o pid=,ppid= | awk -v roots="$*" '
    { parent[$1] = $2 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) found[r[i]] = 1
      while (n > 0) { n = 0; for (p in parent) if (!(p in found) && (parent[p] in found)) { found[p] = 1; n++ } }
      for (p in found) print p
    }'
}

# TERM, then KILL after 2 s; waits up to 5 s for all to go. Prints those left.
stop_pids() {
  (($# > 0)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local tries pid
  for tries in $(seq 1 50); do
    local alive=()
    for pid in "$@"; do
      if is_running "$pid"; then alive+=("$pid"); fi
    done
    ((${#alive[@]} > 0)) || return 0
    if ((tries == 20)); then kill -KILL "${alive[@]}" 2>/dev/null || true; fi
    sleep 0.1
  done
  for pid in "$@"; do
    if is_running "$pid"; then echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; fi
  done
}

# ---------------------------------------------------------------- up
# A TCP port for slurmctld that no socket here holds and no other fixture
# chose: derived from NAME, then the next free one, below Linux's ephemeral
# range (32768 on) so that no outgoing connection takes it meanwhile. The
# caller holds the lock.
pick_port() {
  local name="$1" port tries
  port=$((20000 + $(printf '%s' "$name" | cksum | cut -d' ' -f1) % 12000))
  for tries in $(seq 1 200); do
    if ! grep -qxF "$port" "$VSLURM_ROOT"/*/port 2>/dev/null \
      && [[ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]]; then
      echo "$port"
      return 0
    fi
    port=$((port + 1))
    ((port < 32000)) || port=20000
  done
  die "no free TCP port for slurmctld in 20000..31999"
}

write_config() {
  local name="$1" state="$2" port="$3" bridge_addr="$4" slots="$5"
  shift 5
  local hosts=("$@") host addr
  local ctld_host
  ctld_host="$(hostname -s)"
  # ClusterName: lower case, at most 40 characters.
  cat >"$state/etc/slurm.conf" <<EOF
# Written by tests/cluster/vcluster/slurm.sh for vcluster $name; removed by 'slurm.sh down $name'.
ClusterName=vc$name
SlurmctldHost=$ctld_host($bridge_addr)
SlurmctldPort=$port
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$state/etc/plugstack.conf
MailProg=/bin/true
# What this kernel allows (no usable cgroup hierarchy inside a vcluster host).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule a queued job as soon as CPUs free (default: up to 3 s later).
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
# Quick, for tests: a silent slurmd's node is down after SlurmdTimeout; a
# cancelled or timed-out step gets SIGKILL KillWait s after SIGTERM; a node
# that comes back returns to service; ended jobs stay visible MinJobAge s.
SlurmdTimeout=$SLURMD_TIMEOUT_S
SlurmctldTimeout=10
KillWait=2
MessageTimeout=5
InactiveLimit=0
MinJobAge=300
ReturnToService=2
TmpFS=/tmp
EOF
  local i=0 nodes=()
  for host in "${hosts[@]}"; do
    addr="$(<"$VCLUSTER_ROOT/$name/hosts/$host/address")"
    echo "NodeName=$host NodeAddr=$addr NodeHostname=$host CPUs=$slots State=UNKNOWN" >>"$state/etc/slurm.conf"
    nodes+=("$host")
    i=$((i + 1))
  done
  local all
  all="$(IFS=,; echo "${nodes[*]}")"
  echo "PartitionName=vc Nodes=$all Default=YES MaxTime=INFINITE State=UP" >>"$state/etc/slurm.conf"
  if ((${#nodes[@]} >= 2)); then
    echo "PartitionName=small Nodes=${nodes[0]},${nodes[1]} MaxTime=INFINITE State=UP" >>"$state/etc/slurm.conf"
  fi
  # 22.05 has no CgroupPlugin=disabled, and autodetection fails here.
  echo "CgroupPlugin=cgroup/v1" >"$state/etc/cgroup.conf"
  # Every host shares /tmp: PMIx's per-job folders go to the host's own /dev/shm.
  echo "PMIxCliTmpDirBase=/dev/shm" >"$state/etc/mpi.conf"
  : >"$state/etc/plugstack.conf"
}

start_munged() {
  local state="$1" out
  dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$state/munge/munge.key"
  # --force: run although the socket's folder is not munge's own (we are root).
  if ! out="$(munged --force --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
    --pid-file="$state/run/munged.pid" --log-file="$state/log/munged.log" \
    --seed-file="$state/munge/munged.seed" </dev/null 2>&1 {LOCK_FD}>&-)"; then
    die "munged did not start: $out $(tail -5 "$state/log/munged.log" 2>/dev/null)"
  fi
  if ! out="$(munge -S "$state/munge/munge.socket" -n </dev/null 2>&1 | unmunge -S "$state/munge/munge.socket" 2>&1)"; then
    die "munged at $state/munge/munge.socket does not encode and decode: $out"
  fi
}

start_slurmctld() {
  local state="$1" out
  # -i: ignore saved state (a fresh cluster each time).
  if ! out="$(slurmctld -f "$state/etc/slurm.conf" -i </dev/null 2>&1 {LOCK_FD}>&-)"; then
    die "slurmctld did not start: $out $(tail -5 "$state/log/slurmctld.log" 2>/dev/null)"
  fi
}

start_slurmd() {
  local name="$1" state="$2" host="$3" out
  mkdir -p "$state/spool/$host"
  if ! out="$(SLURM_CONF="$state/etc/slurm.conf" "$VCLUSTER" exec "$name" "$host" \
    slurmd -f "$state/etc/slurm.conf" -N "$host" </dev/null 2>&1 {LOCK_FD}>&-)"; then
    die "slurmd on $host did not start: $out $(tail -5 "$state/log/slurmd-$host.log" 2>/dev/null)"
  fi
}

# Until sinfo shows every node idle, or the deadline passes (then names what is not).
wait_idle() {
  local state="$1" deadline=$((SECONDS + UP_DEADLINE_S)) out
  shift
  local hosts=("$@")
  while true; do
    out="$(SLURM_CONF="$state/etc/slurm.conf" sinfo -h -N -p vc -o '%N %T' 2>&1 || true)"
    local host not_idle=()
    for host in "${hosts[@]}"; do
      grep -qxE "$host idle" <<<"$out" || not_idle+=("$host")
    done
    ((${#not_idle[@]} == 0)) && return 0
    if ((SECONDS >= deadline)); then
      echo "slurm.sh: not idle after ${UP_DEADLINE_S} s: ${not_idle[*]}; sinfo says:" >&2
      echo "$out" >&2
      SLURM_CONF="$state/etc/slurm.conf" sinfo -h -R >&2 2>&1 || true
      local h
      for h in "${not_idle[@]}"; do
        echo "--- $state/log/slurmd-$h.log (tail)" >&2
        tail -n 5 "$state/log/slurmd-$h.log" >&2 2>/dev/null || true
      done
      echo "--- $state/log/slurmctld.log (tail)" >&2
      tail -n 8 "$state/log/slurmctld.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.2
  done
}

cmd_up() {
  [[ $# == 1 ]] || die "usage: slurm.sh up NAME"
  local name="$1"
  check_name "$name"
  [[ "$SLURMD_TIMEOUT_S" =~ ^[1-9][0-9]*$ ]] || die "VSLURM_SLURMD_TIMEOUT_S must be whole seconds, not '$SLURMD_TIMEOUT_S'"
  [[ "$UP_DEADLINE_S" =~ ^[1-9][0-9]*$ ]] || die "VSLURM_UP_DEADLINE_S must be whole seconds, not '$UP_DEADLINE_S'"
  (cmd_check >/dev/null)
  local hosts
  mapfile -t hosts < <("$VCLUSTER" hosts "$name" 2>/dev/null) \
    || die "vcluster '$name' is not up: 'vcluster.sh up $name HOSTS SLOTS' first"
  ((${#hosts[@]} > 0)) || die "vcluster '$name' is not up: 'vcluster.sh up $name HOSTS SLOTS' first"
  local vstate="$VCLUSTER_ROOT/$name"
  local bridge_addr slots
  bridge_addr="$(<"$vstate/subnet").1"
  slots="$(<"$vstate/slots")"
  take_lock
  local state
  state="$(state_of "$name")"
  if [[ -e "$state" ]] || [[ -n "$(pids_of_state "$state")" ]]; then
    die "Slurm of '$name' is up (or a stale one is): 'slurm.sh down $name' first"
  fi
  # Whatever fails from here leaves nothing behind.
  # shellcheck disable=SC2064
  trap "echo 'slurm.sh: up $name failed; stopping what was started' >&2; teardown '$name' >&2 || true" EXIT
  mkdir -p "$state"/{etc,ctld,spool,run,log,munge}
  chmod 0755 "$state/munge"  # munged wants its socket's folder searchable by all
  local port
  port="$(pick_port "$name")"
  echo "$port" >"$state/port"
  write_config "$name" "$state" "$port" "$bridge_addr" "$slots" "${hosts[@]}"
  start_munged "$state"
  start_slurmctld "$state"
  local host
  for host in "${hosts[@]}"; do start_slurmd "$name" "$state" "$host"; done
  # The port is taken now: others may choose.
  flock -u "$LOCK_FD"
  wait_idle "$state" "${hosts[@]}" || die "the nodes of '$name' did not come up (above: what sinfo and the logs say)"
  trap - EXIT
  echo "slurm.sh: Slurm on $name is up: slurmctld on $bridge_addr:$port, ${#hosts[@]} nodes idle ($slots CPUs each); export $(cmd_env "$name" | tr '\n' ' ')"
}

# ---------------------------------------------------------------- env
cmd_env() {
  [[ $# == 1 ]] || die "usage: slurm.sh env NAME"
  check_name "$1"
  local state
  state="$(state_of "$1")"
  [[ -s "$state/etc/slurm.conf" ]] || die "Slurm of '$1' is not up: 'slurm.sh up $1' first"
  echo "SLURM_CONF=$state/etc/slurm.conf"
}

# ---------------------------------------------------------------- down
# Every slurmstepd of this fixture (and what runs under it): in a host of
# NAME, i.e. sharing a holder's mount namespace. They do not name the state.
stepd_pids() {
  local name="$1" holder mnt pid
  for holder in $(pgrep -f "^vcluster-holder:$name-h[0-9]+ infinity" 2>/dev/null || true); do
    mnt="$(readlink "/proc/$holder/ns/mnt" 2>/dev/null)" || continue
    [[ "$mnt" != "$(readlink /proc/self/ns/mnt)" ]] || continue
    for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
      if [[ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" == "$mnt" ]]; then descendants "$pid"; fi
    done
  done
}

teardown() {
  local name="$1" state left=()
  state="$(state_of "$name")"
  local pids=() pid file
  # The nodes first, with what runs under their slurmstepds (a slurmd gone
  # first would leave those running), then the controller and munged, then
  # anything still working in the state folder.
  for file in "$state"/run/slurmd-*.pid; do
    pid="$(pid_from_file "$file" "$state/")" && pids+=("$pid")
  done
  mapfile -t -O "${#pids[@]}" pids < <(stepd_pids "$name")
  local targets
  mapfile -t targets < <(printf '%s\n' "${pids[@]}" | grep -E '^[0-9]+$' | sort -un)
  mapfile -t left < <(stop_pids "${targets[@]}")
  local _
  for _ in 1 2; do  # twice: for what started while the first round was stopping
    pids=()
    pid="$(pid_from_file "$state/run/slurmctld.pid" "$state/")" && pids+=("$pid")
    pid="$(pid_from_file "$state/run/munged.pid" "$state/")" && pids+=("$pid")
    mapfile -t -O "${#pids[@]}" pids < <(pids_of_state "$state")
    mapfile -t targets < <(descendants "${pids[@]}" | sort -un)
    mapfile -t -O "${#left[@]}" left < <(stop_pids "${targets[@]}")
  done
  if ((${#left[@]} > 0)); then
    printf 'slurm.sh: still running after SIGKILL: %s\n' "${left[@]}" >&2
    return 1
  fi
  rm -rf -- "$state"
}

cmd_down() {
  [[ $# == 1 ]] || die "usage: slurm.sh down NAME"
  check_name "$1"
  if [[ "$(id -u)" != 0 ]]; then echo "slurm.sh: not root: nothing of $1 can run"; return 0; fi
  take_lock
  teardown "$1" || die "could not stop every daemon of '$1'"
  echo "slurm.sh: Slurm of $1 is down"
}

# NAME HOST -> the host's name (NAME-hI), HOST being that, I or hI.
host_name() {
  local name="$1" host="$2"
  if [[ "$host" =~ ^h?([0-9]+)$ ]]; then host="$name-h${BASH_REMATCH[1]}"; fi
  [[ -d "$VCLUSTER_ROOT/$name/hosts/$host" ]] || die "vcluster '$name' has no host '$2'"
  echo "$host"
}

cmd_kill_node() {
  [[ $# == 2 ]] || die "usage: slurm.sh kill-node NAME HOST"
  check_name "$1"
  local host state pid
  host="$(host_name "$1" "$2")"
  state="$(state_of "$1")"
  pid="$(pid_from_file "$state/run/slurmd-$host.pid" "$state/")" || die "no slurmd of $host runs"
  kill -KILL "$pid"
  echo "slurm.sh: slurmd of $host (pid $pid) killed"
}

cmd_start_node() {
  [[ $# == 2 ]] || die "usage: slurm.sh start-node NAME HOST"
  check_name "$1"
  local host state
  host="$(host_name "$1" "$2")"
  state="$(state_of "$1")"
  [[ -s "$state/etc/slurm.conf" ]] || die "Slurm of '$1' is not up: 'slurm.sh up $1' first"
  take_lock
  if pid_from_file "$state/run/slurmd-$host.pid" "$state/" >/dev/null; then die "the slurmd of $host runs already"; fi
  start_slurmd "$1" "$state" "$host"
  flock -u "$LOCK_FD"
  wait_idle "$state" "$host" || die "$host did not come back idle (above: what sinfo and its log say)"
  echo "slurm.sh: slurmd of $host started; the node is idle"
}

cmd_mpirun_args() {
  [[ $# == 1 ]] || die "usage: slurm.sh mpirun-args NAME"
  check_name "$1"
  local args i
  mapfile -t args < <("$VCLUSTER" mpirun-args "$1") || die "vcluster '$1' is not up"
  ((${#args[@]} > 0)) || die "vcluster '$1' is not up"
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[i]}" == --mca && "${args[i + 1]:-}" == plm_rsh_agent ]]; then
      i=$((i + 2))
      continue
    fi
    echo "${args[i]}"
  done
}

cmd_status() {
  [[ $# == 1 ]] || die "usage: slurm.sh status NAME"
  check_name "$1"
  local state pid
  state="$(state_of "$1")"
  for pid in $(pids_of_state "$state"); do echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; done
  for pid in $(stepd_pids "$1"); do echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; done
}

# ---------------------------------------------------------------- main
main() {
  (($# >= 1)) || die "usage: slurm.sh check|up|env|down|status|mpirun-args|kill-node|start-node ..."
  local command="$1"
  shift
  case "$command" in
    check) cmd_check ;;
    up) cmd_up "$@" ;;
    env) cmd_env "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    mpirun-args) cmd_mpirun_args "$@" ;;
    kill-node) cmd_kill_node "$@" ;;
    start-node) cmd_start_node "$@" ;;
    *) die "unknown command '$command'" ;;
  esac
}

main "$@"
