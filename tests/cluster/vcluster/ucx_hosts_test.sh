#!/usr/bin/env bash
# ucx_hosts_test.sh NAME WORKDIR TRANSPORT_MPI_TEST: UCX between two hosts of
# cluster NAME goes over the network, not over shared memory or CMA.
#  1. moex's UCX transport passes its conformance suite on 2 hosts x 2 ranks,
#     and UCX's own log shows endpoints on TCP over the host's eth0 (the veth)
#     besides shared-memory ones within a host;
#  2. restricted to shared memory (UCX_TLS=sm,self) it fails between hosts,
#     "Destination is unreachable", and passes within one host: without a
#     private boot id and IPC namespace per host it would pass both.
set -euo pipefail
source "$(dirname "$0")/test_lib.sh"
name="$1" work="$2" suite="$3"
need_cluster "$name"
mkdir -p "$work"
only_ucx=--gtest_filter='*PassesTheSuite/ucx'
two_by_two="$("$VCLUSTER" hostfile "$name" "$work/hostfile-ucx-2x2" 2 2)"
one_by_one="$("$VCLUSTER" hostfile "$name" "$work/hostfile-ucx-1x1" 1 1)"
one_host="$("$VCLUSTER" hostfile "$name" "$work/hostfile-ucx-2x0" 2)"

log="$work/ucx-2x2.log"
vmpirun "$name" "$two_by_two" 4 -x UCX_LOG_LEVEL=debug "$suite" "$only_ucx" >"$log" 2>&1 \
  || { tail -40 "$log"; fail "the UCX suite on 2 hosts x 2 ranks failed (log $log)"; }
grep -q '\[  PASSED  \] 1 test' "$log" || fail "the UCX suite did not pass on 2 hosts x 2 ranks (log $log)"
# "ep 0x..: lane[0]:  2:tcp/eth0.0 md[1] -> ..." from both hosts.
for host in "$name-h0" "$name-h1"; do
  grep -E "\[$host:[0-9]+ *:[0-9]+\] .*lane\[[0-9]+\]: +[0-9]+:tcp/eth0" "$log" >/dev/null \
    || fail "no UCX endpoint on $host uses tcp/eth0 (log $log)"
  grep -E "\[$host:[0-9]+ *:[0-9]+\] .*lane\[[0-9]+\]: +[0-9]+:(posix|sysv)/" "$log" >/dev/null \
    || fail "no UCX endpoint on $host uses shared memory within the host (log $log)"
done
echo "ok: UCX suite passes on 2 hosts x 2 ranks; endpoints: $(grep -oE 'lane\[[0-9]+\]: +[0-9]+:[a-z]+/[a-z0-9]+\.[0-9]+ ' "$log" | sed -E 's/.*:([a-z]+\/[a-z0-9]+)\.[0-9]+ $/\1/' | sort | uniq -c | awk '{printf "%s%s x%s", n++ ? ", " : "", $2, $1}')"

log="$work/ucx-sm-between-hosts.log"
if vmpirun "$name" "$one_by_one" 2 -x UCX_TLS=sm,self "$suite" "$only_ucx" >"$log" 2>&1; then
  fail "UCX_TLS=sm,self passed between two hosts: they share memory, the cluster is not multi-host (log $log)"
fi
grep -q "Destination is unreachable" "$log" || { tail -30 "$log"; fail "UCX_TLS=sm,self between hosts failed, but not as unreachable (log $log)"; }
echo "ok: UCX_TLS=sm,self between $name-h0 and $name-h1: Destination is unreachable"

log="$work/ucx-sm-one-host.log"
vmpirun "$name" "$one_host" 2 -x UCX_TLS=sm,self "$suite" "$only_ucx" >"$log" 2>&1 \
  || { tail -30 "$log"; fail "UCX_TLS=sm,self within one host failed (log $log)"; }
echo "ok: UCX_TLS=sm,self within $name-h0: passes"
echo "PASS"
