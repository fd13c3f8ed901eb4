# Sourced by the controller-over-the-cluster tests (control_hosts_test.sh,
# control_slurm_test.sh) after chaos_lib.sh: a controller that ranks on the
# cluster's hosts reach, and what those tests check alike.
# shellcheck shell=bash

# serve_cluster NTH [serve flags...]: moex serve on every address, telling
# ranks the bridge address ($bridge); waits for its NTH "listening" line in
# $work/serve.out (a restart appends the next), then exports MOEX_CONTROLLER.
# --insecure: no token, on an address other hosts reach; only the test's own
# namespaces reach the bridge.
serve_cluster() {
  local nth="$1"
  shift
  "$moex" serve --listen "0.0.0.0:${port}" --insecure --advertise "$bridge" --state-dir "$state_dir" \
    --heartbeat-timeout 6 "$@" >>"$work/serve.out" 2>&1 &
  serve=$!
  for _ in $(seq 300); do
    if [[ "$(grep -c listening "$work/serve.out" 2>/dev/null)" -ge "$nth" ]]; then
      port="$(sed -n 's/.*listening on 0.0.0.0:\([0-9]*\).*/\1/p' "$work/serve.out" | tail -1)"
      export MOEX_CONTROLLER="127.0.0.1:$port"
      return 0
    fi
    kill -0 "$serve" 2>/dev/null || fail "the controller exited: $(cat "$work/serve.out")"
    sleep 0.1
  done
  fail "the controller did not start"
}

# wait_cleanup ID: the job's end cleanup ran on its hosts (its step carries
# the job id on its command line, so no process check can pass before).
wait_cleanup() {
  for _ in $(seq 300); do
    grep -q "^moex serve: cleanup of job $1 " "$state_dir/logs/$1.log" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "job $1: no cleanup within 30 s: $(grep cleanup "$state_dir/logs/$1.log" || true)"
}

# succeeded_two_per_host ID WHAT: the job SUCCEEDED with 2 ranks on each of h0, h1.
succeeded_two_per_host() {
  wait_for "$1" "j['state'] in ('JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED')" 120
  "$moex" job status "$1" | grep -v "^  log:"
  [ "$(field "$1" "j['state']")" = JOB_STATE_SUCCEEDED ] || fail "$2 did not succeed"
  [ "$(field "$1" "sorted(r['host'] for r in j['ranks']) == ['$h0', '$h0', '$h1', '$h1']")" = True ] ||
    fail "the ranks of $2 are not 2 on each host"
}
