#!/usr/bin/env bash
# smoke_test.sh NAME WORKDIR: two hosts of cluster NAME are two machines as far
# as mpirun, /dev/shm, SysV IPC, boot ids and the agent's environment go.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2"
need_cluster "$name"
mkdir -p "$work"
h0="$name-h0" h1="$name-h1"
hostfile="$("$VCLUSTER" hostfile "$name" "$work/hostfile-smoke" 2 2)"

# mpirun places two ranks on each host, each reporting its own host name.
out="$(vmpirun "$name" "$hostfile" 4 hostname | sort | tr '\n' ' ')"
[[ "$out" == "$h0 $h0 $h1 $h1 " ]] || fail "mpirun -np 4 hostname over $h0, $h1 printed: $out"
echo "ok: mpirun -np 4 hostname: $out"

# /dev/shm is the host's: a file made by one launch in h0 is seen by a later
# launch in h0, not by h1 nor by the machine itself.
hf0="$("$VCLUSTER" hostfile "$name" "$work/hostfile-smoke-h0" 1)"
hf1="$("$VCLUSTER" hostfile "$name" "$work/hostfile-smoke-h1" 0 1)"
file="/dev/shm/vcluster-smoke-$$"
vmpirun "$name" "$hf0" 1 touch "$file"
vmpirun "$name" "$hf0" 1 test -e "$file" || fail "$file made in $h0 is gone at the next launch in $h0"
if vmpirun "$name" "$hf1" 1 test -e "$file" 2>/dev/null; then fail "$file made in $h0 is visible in $h1"; fi
[[ ! -e "$file" ]] || fail "$file made in $h0 is visible outside the cluster"
"$VCLUSTER" exec "$name" "$h0" test -e "$file" || fail "$file not seen by vcluster.sh exec in $h0"
"$VCLUSTER" exec "$name" "$h0" rm "$file"
echo "ok: /dev/shm: a file made in $h0 lasts across launches in $h0 and is seen neither in $h1 nor outside"

# Boot ids (what UCX compares) differ between hosts and from the machine's.
b0="$("$VCLUSTER" exec "$name" "$h0" cat /proc/sys/kernel/random/boot_id)"
b1="$("$VCLUSTER" exec "$name" "$h1" cat /proc/sys/kernel/random/boot_id)"
bm="$(cat /proc/sys/kernel/random/boot_id)"
[[ "$b0" != "$b1" && "$b0" != "$bm" && "$b1" != "$bm" ]] || fail "boot ids not private: $h0 $b0, $h1 $b1, machine $bm"
echo "ok: boot ids: $h0 $b0, $h1 $b1, machine $bm"

# SysV shared memory is the host's.
"$VCLUSTER" exec "$name" "$h0" sh -c "ipcmk -M 4096 >/dev/null"
seen0="$("$VCLUSTER" exec "$name" "$h0" ipcs -m | awk 'NR > 3 && $1 != "" {n++} END {print n + 0}')"
seen1="$("$VCLUSTER" exec "$name" "$h1" ipcs -m | awk 'NR > 3 && $1 != "" {n++} END {print n + 0}')"
"$VCLUSTER" exec "$name" "$h0" sh -c 'ipcs -m | awk "NR > 3 && \$2 != \"\" {print \$2}" | xargs -r -n1 ipcrm -m'
((seen0 >= 1 && seen1 == 0)) || fail "SysV segment made in $h0: $h0 sees $seen0, $h1 sees $seen1"
echo "ok: SysV IPC: a segment made in $h0 is not seen in $h1"

# The agent passes no environment, as ssh would not: PATH and HOME only.
env_seen="$(VCLUSTER_SMOKE_SECRET=leak "$VCLUSTER" agent "$h1" env | sort | cut -d= -f1 | tr '\n' ' ')"
[[ "$env_seen" == "HOME PATH PWD " ]] || fail "the agent's command saw the environment: $env_seen"
echo "ok: the agent's command sees only: $env_seen"
echo "PASS"
