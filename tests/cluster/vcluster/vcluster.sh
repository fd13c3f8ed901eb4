#!/usr/bin/env bash
# vcluster: several "hosts" on this one machine, made of Linux namespaces, so
# that multi-host runs (mpirun over a hostfile, UCX over TCP between hosts,
# shared memory only within a host) can be tested without a second machine.
#
#   vcluster.sh check                          can namespaces be made here? (exit 77 and why, if not)
#   vcluster.sh up [--replace] NAME HOSTS SLOTS_PER_HOST
#                                              make hosts NAME-h0 .. NAME-h<HOSTS-1> (--replace: remove
#                                              an existing or stale NAME first)
#   vcluster.sh down [--verify] NAME           remove everything of NAME (idempotent; also a stale one)
#   vcluster.sh verify-gone NAME               exit 1, naming it, if anything of NAME is left
#   vcluster.sh exec NAME HOST cmd...          run cmd in HOST, with the caller's environment
#   vcluster.sh lose NAME HOST                 SIGKILL every process of HOST (a power cut)
#   vcluster.sh cut|mend NAME HOST             take HOST's network away (packets dropped) or back
#   vcluster.sh agent [ssh options] HOST cmd   Open MPI's plm_rsh_agent: like ssh, no environment passed
#   vcluster.sh hostfile NAME                  print the path of the hostfile (every host, SLOTS_PER_HOST)
#   vcluster.sh hostfile NAME FILE N0 [N1..]   write a hostfile with N0 slots on h0, N1 on h1, ...
#   vcluster.sh mpirun-args NAME               print, one per line, the mpirun options the cluster needs
#   vcluster.sh hosts NAME                     print the host names, one per line
#   vcluster.sh shape NAME HOST RATE DELAY [BURST]  shape HOST's link both ways: tbf RATE (e.g. 2gbit)
#                                              and/or netem DELAY (e.g. 1ms) each way; "0" leaves one out
#   vcluster.sh unshape NAME HOST              remove the shaping
#   vcluster.sh list                           clusters with state here
#
# HOST is a host name (NAME-h1), or its index (1, h1).
#
# A host is: a network namespace (vc-NAME-hI) whose eth0 is a veth into the
# bridge vcb-NAME in the root namespace (the bridge has .1 of the subnet, so
# mpirun in the root namespace reaches every host); a UTS namespace (its host
# name); a mount namespace with its own tmpfs /dev/shm, its own
# sysfs (its own /sys/class/net, which UCX reads), a private boot id bind-mounted
# over /proc/sys/kernel/random/boot_id (UCX decides from it whether two
# processes share a machine) and its own /etc/hosts naming every host; and a
# SysV IPC namespace. One holder process per host keeps these namespaces; every
# command in the host joins them with nsenter, so a host's /dev/shm lasts across
# launches. All hosts still share one pid space and the rest of the file system
# (/tmp included, as a shared file system would be: a build or a clone under
# /tmp is where the ranks find it; Open MPI's session directories there are
# named after each host).
#
# State lives in $VCLUSTER_ROOT/NAME (default /run/moex-vcluster/NAME). The
# agent finds a host from its name alone, so the root must be the same for
# mpirun and for the agents it starts (tree spawn starts agents inside hosts).
set -euo pipefail

readonly VCLUSTER_ROOT="${VCLUSTER_ROOT:-/run/moex-vcluster}"
readonly SKIP_CODE=77
readonly HOST_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
readonly MAX_HOSTS=16
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
readonly SELF

die() {
  echo "vcluster: error: $*" >&2
  exit 1
}

skip() {
  echo "vcluster: SKIP: $*" >&2
  exit "$SKIP_CODE"
}

# Names: every kernel object of cluster NAME can be found from NAME alone, so a
# crashed run's leftovers can be removed. Interface names hold at most 15
# characters: vcb-NAME (12), vce-NAME-I (15 for I < 100).
check_name() {
  [[ "$1" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "cluster name '$1' must be 1 to 8 of [a-z0-9], starting with a letter"
}
bridge_of() { echo "vcb-$1"; }
veth_of() { echo "vce-$1-$2"; }
netns_of() { echo "vc-$1-h$2"; }
host_of() { echo "$1-h$2"; }
state_of() { echo "$VCLUSTER_ROOT/$1"; }
holder_tag() { echo "vcluster-holder:$1"; }  # argv[0] of a holder, per host name

# Serialises up and down: the choice of a free subnet, and a teardown racing a setup.
take_lock() {
  mkdir -p "$VCLUSTER_ROOT"
  exec {LOCK_FD}>"$VCLUSTER_ROOT/.lock"
  flock "$LOCK_FD"
}

# ---------------------------------------------------------------- check
cmd_check() {
  [[ "$(id -u)" == 0 ]] || skip "needs root to make network, mount, UTS and IPC namespaces (uid $(id -u))"
  local tool
  for tool in ip nsenter unshare flock mount umount setsid; do
    command -v "$tool" >/dev/null || skip "no '$tool' on PATH (packages iproute2, util-linux)"
  done
  # Try for real: a capability set or a seccomp filter can refuse what root may.
  local probe="vcprobe$$" out
  if ! out="$(ip netns add "$probe" 2>&1)"; then
    skip "cannot make a network namespace: $out"
  fi
  ip netns del "$probe" 2>/dev/null || true
  if ! out="$(unshare --uts --ipc --mount --propagation private -- mount -t tmpfs tmpfs /dev/shm 2>&1)"; then
    skip "cannot make UTS/IPC/mount namespaces with a tmpfs: $out"
  fi
  if ! out="$(ip link add "vcp$$" type bridge 2>&1)"; then
    skip "cannot make a bridge: $out"
  fi
  ip link del "vcp$$" 2>/dev/null || true
  echo "vcluster: namespaces, veths and bridges can be made here"
}

# ---------------------------------------------------------------- up
# A /24 that nothing in the root namespace routes yet and no other cluster
# holds (the caller holds the lock).
pick_subnet() {
  local n prefix
  for n in $(seq 0 255); do
    prefix="10.231.$n"
    if grep -qxF "$prefix" "$VCLUSTER_ROOT"/*/subnet 2>/dev/null; then continue; fi
    if [[ -n "$(ip -4 route show to match "$prefix.1" | grep -v '^default' || true)" ]]; then continue; fi
    echo "$prefix"
    return 0
  done
  die "no free /24 in 10.231.0.0/16"
}

cmd_up() {
  local replace=0
  if [[ "${1:-}" == "--replace" ]]; then replace=1; shift; fi
  [[ $# == 3 ]] || die "usage: vcluster.sh up [--replace] NAME HOSTS SLOTS_PER_HOST"
  local name="$1" hosts="$2" slots="$3"
  check_name "$name"
  if ! [[ "$hosts" =~ ^[0-9]+$ ]] || ((hosts < 1 || hosts > MAX_HOSTS)); then
    die "HOSTS must be 1 to $MAX_HOSTS, not '$hosts'"
  fi
  if ! [[ "$slots" =~ ^[0-9]+$ ]] || ((slots < 1 || slots > 256)); then
    die "SLOTS_PER_HOST must be 1 to 256, not '$slots'"
  fi
  (cmd_check >/dev/null)  # exits 77, saying why, where namespaces cannot be made
  take_lock
  local state
  state="$(state_of "$name")"
  if ((replace)); then teardown "$name"; fi
  if [[ -e "$state" ]] || ip link show "$(bridge_of "$name")" >/dev/null 2>&1; then
    die "cluster '$name' exists (or a stale one does): 'vcluster.sh down $name' first, or up --replace"
  fi
  # Whatever fails from here (a command, or die) leaves nothing behind. The
  # name is checked above, so it can stand in the trap's text.
  # shellcheck disable=SC2064
  trap "echo 'vcluster: up $name failed; removing what was made' >&2; teardown '$name' >&2 || true" EXIT
  mkdir -p "$state/hosts"
  local subnet
  subnet="$(pick_subnet)"
  echo "$subnet" >"$state/subnet"
  echo "$hosts" >"$state/num_hosts"
  echo "$slots" >"$state/slots"

  local bridge
  bridge="$(bridge_of "$name")"
  ip link add "$bridge" type bridge
  ip addr add "$subnet.1/24" dev "$bridge"
  ip link set "$bridge" up

  local i etc_hosts="$state/etc_hosts"
  {
    echo "127.0.0.1 localhost"
    echo "$subnet.1 $name-root"
    for ((i = 0; i < hosts; i++)); do echo "$subnet.$((10 + i)) $(host_of "$name" "$i")"; done
  } >"$etc_hosts"

  local starting=()
  for ((i = 0; i < hosts; i++)); do
    local host netns veth dir
    host="$(host_of "$name" "$i")"
    netns="$(netns_of "$name" "$i")"
    veth="$(veth_of "$name" "$i")"
    dir="$state/hosts/$host"
    mkdir -p "$dir"
    echo "$i" >"$dir/index"
    echo "$subnet.$((10 + i))" >"$dir/address"
    cat /proc/sys/kernel/random/uuid >"$dir/boot_id"
    cp "$etc_hosts" "$dir/etc_hosts"
    echo "$host" >"$dir/etc_hostname"

    ip netns add "$netns"
    ip link add "$veth" type veth peer name eth0 netns "$netns"
    ip link set "$veth" master "$bridge" up
    ip -n "$netns" link set lo up
    ip -n "$netns" addr add "$subnet.$((10 + i))/24" dev eth0
    ip -n "$netns" link set eth0 up

    # The holder: enters the network namespace, makes the others, mounts the
    # host's own files, and sleeps. Detached from this shell's terminal and
    # pipes (a test runner waits for those to close) and from the lock.
    setsid nsenter --net="/run/netns/$netns" -- \
      unshare --uts --ipc --mount --propagation private -- \
      "$SELF" _holder "$dir" "$host" </dev/null >"$dir/holder.log" 2>&1 {LOCK_FD}>&- &
    starting+=("$!")
  done

  for ((i = 0; i < hosts; i++)); do
    local dir waited=0
    dir="$state/hosts/$(host_of "$name" "$i")"
    until [[ -s "$dir/pid" ]]; do
      if ((waited >= 100)) || ! is_running "${starting[i]}"; then
        die "host $(host_of "$name" "$i") did not start: $(cat "$dir/holder.log" 2>/dev/null)"
      fi
      sleep 0.1
      waited=$((waited + 1))
    done
  done

  local hostfile="$state/hostfile"
  for ((i = 0; i < hosts; i++)); do echo "$(host_of "$name" "$i") slots=$slots"; done >"$hostfile"
  trap - EXIT
  echo "vcluster: $name is up: $hosts hosts on $subnet.0/24 (bridge $bridge at $subnet.1), $slots slots each; hostfile $hostfile"
}

# Runs as the holder of one host, inside its new namespaces.
cmd_holder() {
  local dir="$1" host="$2"
  hostname "$host"
  mount -t tmpfs -o mode=1777 "shm-$host" /dev/shm
  # The network namespace's own devices in /sys/class/net (UCX lists them there).
  umount -l /sys 2>/dev/null || true
  mount -t sysfs "sysfs-$host" /sys
  mount --bind "$dir/boot_id" /proc/sys/kernel/random/boot_id
  mount --bind "$dir/etc_hosts" /etc/hosts
  if [[ -e /etc/hostname ]]; then mount --bind "$dir/etc_hostname" /etc/hostname; fi
  echo "$$" >"$dir/pid.new"
  mv "$dir/pid.new" "$dir/pid"
  exec -a "$(holder_tag "$host")" sleep infinity
}

# ---------------------------------------------------------------- down
# Every process in a host: those in its network namespace (by name), and those
# sharing its holder's mount namespace (in case the name went first).
host_pids() {
  local name="$1" i="$2" host netns holder mnt pid
  host="$(host_of "$name" "$i")"
  netns="$(netns_of "$name" "$i")"
  if [[ -e "/run/netns/$netns" ]]; then ip netns pids "$netns" 2>/dev/null || true; fi
  for holder in $(pgrep -x -f "$(holder_tag "$host") infinity" || true); do
    echo "$holder"
    mnt="$(readlink "/proc/$holder/ns/mnt" 2>/dev/null)" || continue
    # A holder always has a mount namespace of its own; never scan for ours.
    [[ "$mnt" != "$(readlink /proc/self/ns/mnt)" && "$mnt" != "$(readlink /proc/1/ns/mnt)" ]] || continue
    find /proc/[0-9]*/ns/mnt -maxdepth 0 -lname "${mnt//[/\\[}" 2>/dev/null | cut -d/ -f3 || true
  done
}

# Indices of the hosts that exist in any form (namespace, holder, veth, state).
host_indices() {
  local name="$1"
  local state
  state="$(state_of "$name")"
  {
    ip netns list 2>/dev/null | sed -nE "s/^vc-$name-h([0-9]+)( .*)?$/\1/p" || true
    ip -o link show 2>/dev/null | sed -nE "s/^[0-9]+: vce-$name-([0-9]+)[@:].*/\1/p" || true
    pgrep -a -f "^vcluster-holder:$name-h[0-9]+ infinity" 2>/dev/null | sed -nE "s/.*:$name-h([0-9]+) .*/\1/p" || true
    if [[ -d "$state/hosts" ]]; then ls "$state/hosts" | sed -nE "s/^$name-h([0-9]+)$/\1/p"; fi
  } | sort -un
}

# Running, and not a zombie waiting for its parent (often init) to reap it.
is_running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${stat##*) }" != Z* ]]
}

kill_all() {
  (($# > 0)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  local pid tries
  for tries in $(seq 1 30); do
    local alive=()
    for pid in "$@"; do
      if is_running "$pid"; then alive+=("$pid"); fi
    done
    ((${#alive[@]} > 0)) || return 0
    if ((tries == 10)); then kill -KILL "${alive[@]}" 2>/dev/null || true; fi
    sleep 0.1
  done
}

teardown() {
  local name="$1" i pids
  local indices
  indices="$(host_indices "$name")"
  # Twice: a process may have forked while the first round was killing.
  local round
  for round in 1 2; do
    pids=()
    for i in $indices; do mapfile -t -O "${#pids[@]}" pids < <(host_pids "$name" "$i" | sort -un); done
    kill_all "${pids[@]}"
  done
  for i in $indices; do
    ip netns del "$(netns_of "$name" "$i")" 2>/dev/null || true
    ip link del "$(veth_of "$name" "$i")" 2>/dev/null || true
  done
  ip link del "$(bridge_of "$name")" 2>/dev/null || true
  rm -rf -- "$(state_of "$name")"
}

cmd_down() {
  local verify=0
  if [[ "${1:-}" == "--verify" ]]; then verify=1; shift; fi
  [[ $# == 1 ]] || die "usage: vcluster.sh down [--verify] NAME"
  check_name "$1"
  if [[ "$(id -u)" != 0 ]]; then echo "vcluster: not root: nothing of $1 can exist"; return 0; fi
  take_lock
  teardown "$1"
  echo "vcluster: $1 is down"
  if ((verify)); then cmd_verify_gone "$1"; fi
}

cmd_verify_gone() {
  [[ $# == 1 ]] || die "usage: vcluster.sh verify-gone NAME"
  local name="$1" left=()
  check_name "$name"
  local line
  while read -r line; do [[ -n "$line" ]] && left+=("netns $line"); done \
    < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^vc-$name-h[0-9]+$" || true)
  while read -r line; do [[ -n "$line" ]] && left+=("link $line"); done \
    < <(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^(vcb-$name|vce-$name-[0-9]+)$" || true)
  while read -r line; do [[ -n "$line" ]] && left+=("process $line"); done \
    < <(pgrep -a -f "^vcluster-holder:$name-h[0-9]+ infinity" || true)
  if [[ -e "$(state_of "$name")" ]]; then left+=("state $(state_of "$name")"); fi
  if ((${#left[@]} > 0)); then
    printf 'vcluster: left behind by %s: %s\n' "$name" "${left[@]}" >&2
    return 1
  fi
  echo "vcluster: nothing of $name is left (no netns, veth, bridge, holder or state)"
}

# ---------------------------------------------------------------- in a host
# Prints "<holder pid>" of HOST (a name, an index, or hI) of cluster NAME.
holder_pid() {
  local name="$1" host="$2"
  if [[ "$host" =~ ^h?([0-9]+)$ ]]; then host="$(host_of "$name" "${BASH_REMATCH[1]}")"; fi
  local file
  file="$(state_of "$name")/hosts/$host/pid"
  [[ -s "$file" ]] || die "cluster '$name' has no host '$host' (is it up?)"
  local pid
  pid="$(<"$file")"
  [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == "$(holder_tag "$host") infinity " ]] \
    || die "the holder of host '$host' (pid $pid) is gone: 'vcluster.sh down $name' and up again"
  echo "$pid"
}

# A whole host lost, as a power cut would lose it: SIGKILL to every process of
# HOST but its holder (the namespaces stay, so that `down` cleans up as ever).
cmd_lose() {
  (($# == 2)) || die "usage: vcluster.sh lose NAME HOST"
  local name="$1" host="$2" holder i pid killed=0
  check_name "$name"
  holder="$(holder_pid "$name" "$host")"
  if [[ "$host" =~ ^h?([0-9]+)$ ]]; then i="${BASH_REMATCH[1]}"; else i="${host##*-h}"; fi
  for pid in $(host_pids "$name" "$i" | sort -u); do
    [[ "$pid" == "$holder" ]] && continue
    kill -9 "$pid" 2>/dev/null && killed=$((killed + 1))
  done
  echo "vcluster: $(host_of "$name" "$i") lost: $killed processes killed"
}

# A host's network gone (cable pulled, switch port down), its processes still
# running: the root side of its veth down, so that packets vanish without a
# reset. `mend` brings it back.
cmd_cut() {
  (($# == 3)) || die "usage: vcluster.sh cut|mend NAME HOST"
  local state="$1" name="$2" host="$3" index
  check_name "$name"
  index="$(host_index "$name" "$host")"
  ip link set "$(veth_of "$name" "$index")" "$state" || die "cannot set $(host_of "$name" "$index")'s link $state"
  echo "vcluster: $(host_of "$name" "$index") network $([[ "$state" == down ]] && echo cut || echo back)"
}

cmd_exec() {
  (($# >= 3)) || die "usage: vcluster.sh exec NAME HOST cmd..."
  local name="$1" host="$2"
  shift 2
  check_name "$name"
  local pid
  pid="$(holder_pid "$name" "$host")"
  exec nsenter --target "$pid" --net --uts --ipc --mount --wd="$PWD" -- "$@"
}

# Called by Open MPI as `AGENT [options] HOST command words...` (Open MPI 4.1
# adds -x only to an agent named ssh, but take ssh's options anyway). As ssh
# does, the words are joined by spaces and given to a shell in the host, with
# an environment of PATH and HOME only: nothing of the caller's.
cmd_agent() {
  while (($# > 0)) && [[ "$1" == -* ]]; do
    case "$1" in
      -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;  # ssh options that take a value
      --) shift; break ;;
      *) shift ;;
    esac
  done
  (($# >= 2)) || die "usage: vcluster.sh agent [ssh options] HOST command..."
  local host="$1"
  shift
  [[ "$host" =~ ^([a-z][a-z0-9]{0,7})-h[0-9]+$ ]] || die "'$host' is not a vcluster host name (NAME-hI)"
  local pid
  pid="$(holder_pid "${BASH_REMATCH[1]}" "$host")"
  local home
  home="$(getent passwd "$(id -un)" | cut -d: -f6)"
  home="${home:-/}"
  exec nsenter --target "$pid" --net --uts --ipc --mount --wd="$home" -- \
    env -i PATH="$HOST_PATH" HOME="$home" /bin/sh -c "$*"
}

# ---------------------------------------------------------------- files
cmd_hostfile() {
  (($# == 1 || $# >= 3)) || die "usage: vcluster.sh hostfile NAME [FILE SLOTS_H0 [SLOTS_H1 ...]]"
  local name="$1"
  check_name "$name"
  local state
  state="$(state_of "$name")"
  [[ -s "$state/hostfile" ]] || die "cluster '$name' is not up"
  if (($# == 1)); then
    echo "$state/hostfile"
    return 0
  fi
  local file="$2" hosts i=0 slots
  shift 2
  hosts="$(<"$state/num_hosts")"
  (($# <= hosts)) || die "cluster '$name' has $hosts hosts, the layout names $#"
  : >"$file"
  for slots in "$@"; do
    [[ "$slots" =~ ^[0-9]+$ ]] || die "slots must be a number, not '$slots'"
    if ((slots > 0)); then echo "$(host_of "$name" "$i") slots=$slots" >>"$file"; fi
    i=$((i + 1))
  done
  echo "$file"
}

cmd_mpirun_args() {
  [[ $# == 1 ]] || die "usage: vcluster.sh mpirun-args NAME"
  check_name "$1"
  local state subnet
  state="$(state_of "$1")"
  [[ -s "$state/subnet" ]] || die "cluster '$1' is not up"
  subnet="$(<"$state/subnet").0/24"
  printf '%s\n' \
    --mca plm_rsh_agent "$(dirname "$SELF")/vcluster-agent" \
    --mca oob_tcp_if_include "$subnet" \
    --mca btl_tcp_if_include "$subnet" \
    --mca btl self,vader,tcp \
    --bind-to none
}

cmd_hosts() {
  [[ $# == 1 ]] || die "usage: vcluster.sh hosts NAME"
  check_name "$1"
  local state i hosts
  state="$(state_of "$1")"
  [[ -s "$state/num_hosts" ]] || die "cluster '$1' is not up"
  hosts="$(<"$state/num_hosts")"
  for ((i = 0; i < hosts; i++)); do host_of "$1" "$i"; done
}

cmd_list() {
  local dir
  for dir in "$VCLUSTER_ROOT"/*/; do
    [[ -s "$dir/subnet" ]] || continue
    echo "$(basename "$dir") $(<"$dir/num_hosts") hosts $(<"$dir/subnet").0/24"
  done
}

# ---------------------------------------------------------------- shaping
# Both ends of the host's veth: the root end's egress is what the host
# receives, eth0's egress what it sends. netem (delay) at the root of each,
# tbf (rate) under it.
cmd_shape() {
  (($# == 4 || $# == 5)) || die "usage: vcluster.sh shape NAME HOST RATE DELAY [BURST]   (RATE e.g. 2gbit, DELAY e.g. 1ms; 0 leaves one out)"
  local name="$1" host="$2" rate="$3" delay="$4" burst="${5:-256kb}"
  check_name "$name"
  command -v tc >/dev/null || die "no 'tc' (package iproute2)"
  [[ "$rate" =~ ^[0-9]+([.][0-9]+)?[a-zA-Z]*$ ]] || die "RATE '$rate' is not like 2gbit"
  [[ "$delay" =~ ^[0-9]+([.][0-9]+)?(us|ms|s)?$ ]] || die "DELAY '$delay' is not like 1ms"
  [[ "$burst" =~ ^[0-9]+[a-zA-Z]*$ ]] || die "BURST '$burst' is not like 256kb"
  local index
  index="$(host_index "$name" "$host")"
  cmd_unshape "$name" "$host" >/dev/null
  local where
  for where in root host; do
    local tc=(tc)
    local dev
    dev="$(veth_of "$name" "$index")"
    if [[ "$where" == host ]]; then tc=(tc -n "$(netns_of "$name" "$index")"); dev=eth0; fi
    local parent=(root)
    local out
    if [[ "$delay" != 0 ]]; then
      if ! out="$("${tc[@]}" qdisc add dev "$dev" root handle 1: netem delay "$delay" limit 100000 2>&1)"; then
        cmd_unshape "$name" "$host" >/dev/null
        if [[ "$out" == *"qdisc kind is unknown"* ]]; then
          die "this kernel has no netem (CONFIG_NET_SCH_NETEM), so no DELAY: give 0 ($out)"
        fi
        die "tc netem on $dev: $out"
      fi
      parent=(parent 1:1)
    fi
    if [[ "$rate" != 0 ]]; then
      if ! out="$("${tc[@]}" qdisc add dev "$dev" "${parent[@]}" handle 10: tbf rate "$rate" burst "$burst" latency 50ms 2>&1)"; then
        cmd_unshape "$name" "$host" >/dev/null
        die "tc tbf on $dev: $out"
      fi
    fi
  done
  echo "vcluster: $(host_of "$name" "$index") shaped both ways: rate $rate, delay $delay each way (0: none)"
}

cmd_unshape() {
  [[ $# == 2 ]] || die "usage: vcluster.sh unshape NAME HOST"
  local index
  index="$(host_index "$1" "$2")"
  tc qdisc del dev "$(veth_of "$1" "$index")" root 2>/dev/null || true
  tc -n "$(netns_of "$1" "$index")" qdisc del dev eth0 root 2>/dev/null || true
  echo "vcluster: $(host_of "$1" "$index") unshaped"
}

host_index() {
  local name="$1" host="$2"
  holder_pid "$name" "$host" >/dev/null
  if [[ "$host" =~ ^h?([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; return 0; fi
  [[ "$host" =~ ^$name-h([0-9]+)$ ]] || die "'$host' is not a host of $name"
  echo "${BASH_REMATCH[1]}"
}

# ---------------------------------------------------------------- main
main() {
  (($# >= 1)) || die "usage: vcluster.sh check|up|down|verify-gone|exec|lose|cut|mend|agent|hostfile|mpirun-args|hosts|shape|unshape|list ..."
  local command="$1"
  shift
  case "$command" in
    check) cmd_check ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    verify-gone) cmd_verify_gone "$@" ;;
    exec) cmd_exec "$@" ;;
    lose) cmd_lose "$@" ;;
    cut) cmd_cut down "$@" ;;
    mend) cmd_cut up "$@" ;;
    agent) cmd_agent "$@" ;;
    hostfile) cmd_hostfile "$@" ;;
    mpirun-args) cmd_mpirun_args "$@" ;;
    hosts) cmd_hosts "$@" ;;
    shape) cmd_shape "$@" ;;
    unshape) cmd_unshape "$@" ;;
    list) cmd_list ;;
    _holder) cmd_holder "$@" ;;
    *) die "unknown command '$command'" ;;
  esac
}

main "$@"
