#!/usr/bin/env bash
# teardown_test.sh NAME: `down` removes a cluster whatever state a crash left
# it in: processes still running in its hosts (one started by exec, one
# daemonised through the agent), a holder killed, the state directory gone.
# Afterwards no namespace, veth, bridge, holder or stray process is left, and
# a second `down` is a no-op.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1"
"$VCLUSTER" check >/dev/null || exit 77
"$VCLUSTER" up --replace "$name" 2 1  # --replace: a stale one from a crashed run

# Strays: a process joined to h0, and an orphaned daemon in h1.
setsid "$VCLUSTER" exec "$name" h0 sleep 300 </dev/null >/dev/null 2>&1 &
"$VCLUSTER" agent "$name-h1" 'setsid sleep 301 </dev/null >/dev/null 2>&1 &'
strays=()
for i in 0 1; do
  for _ in $(seq 1 50); do
    mapfile -t pids < <(ip netns pids "vc-$name-h$i")
    ((${#pids[@]} >= 2)) && break  # the holder and the stray
    sleep 0.1
  done
  ((${#pids[@]} >= 2)) || fail "host $i: expected a holder and a stray, found pids: ${pids[*]:-none}"
  strays+=("${pids[@]}")
done
echo "ok: processes in the hosts (holders and strays): ${strays[*]}"

# A crash: h1's holder gone, and the whole state directory with it.
kill -KILL "$(cat "/run/moex-vcluster/$name/hosts/$name-h1/pid")"
rm -rf "/run/moex-vcluster/$name"
"$VCLUSTER" down "$name"
"$VCLUSTER" verify-gone "$name"
for pid in "${strays[@]}"; do
  if [[ -e "/proc/$pid" && "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then fail "process $pid of a host is still running: $(tr '\0' ' ' <"/proc/$pid/cmdline")"; fi
done
echo "ok: every process of the hosts is gone"
"$VCLUSTER" down "$name" >/dev/null || fail "a second down failed"
"$VCLUSTER" verify-gone "$name"
echo "PASS"
