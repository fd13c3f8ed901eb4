# Sourced by the vcluster tests: how a test reaches the cluster its CTest
# fixture brought up (tests/cluster/CMakeLists.txt), and how it fails or skips.
# shellcheck shell=bash

VCLUSTER="$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vcluster.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Skips (77, saying why) where namespaces cannot be made here; fails where they
# can but cluster $1 is not up (its setup test failed).
need_cluster() {
  local why
  if ! why="$("$VCLUSTER" check 2>&1)"; then
    echo "$why" >&2
    exit 77
  fi
  "$VCLUSTER" hosts "$1" >/dev/null || fail "cluster '$1' is not up: see the test cluster.up"
}

# vmpirun NAME HOSTFILE NP command...: mpirun over the cluster's hosts, ranks
# placed in hostfile order (the first host's slots first). Remote ranks get no
# environment: pass what they need with -x before the command.
vmpirun() {
  local name="$1" hostfile="$2" np="$3"
  shift 3
  local args
  mapfile -t args < <("$VCLUSTER" mpirun-args "$name")
  timeout 120 mpirun "${args[@]}" --hostfile "$hostfile" --map-by slot -np "$np" "$@"
}
