#!/usr/bin/env bash
# Careless operators (issue #19), through the CLI, against a controller that
# runs a job:
#  - a second `moex serve` on the same state dir exits 1 naming the state
#    dir and the first one's pid, and the first one's job goes on (before:
#    the second adopted it and killed it at its heartbeat timeout);
#  - a `moex serve` on a port in use exits 1 "cannot listen on ADDR: in use"
#    (before: both listened, SO_REUSEPORT, and clients were split);
#  - the state dir deleted: submissions are refused naming it (before: the
#    job was recorded in the deleted database and failed with "cannot start
#    'mpirun'");
#  - an address other hosts reach, with neither token nor mutual TLS, is
#    refused unless --insecure (before: it served anyone);
#  - a token file others may read is refused, naming it and its mode
#    (before: it was used).
set -euo pipefail
moex="$1"
work="$(mktemp -d)"
state="$work/state"
serve=""
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cleanup() {
  [ -n "$serve" ] && kill -9 "$serve" 2>/dev/null; wait 2>/dev/null || true
  [ -n "${id:-}" ] && pkill -9 -f "job-id $id" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; cat "$work"/*.out >&2 2>/dev/null || true; exit 1; }
state_of() { "$moex" job status "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['state'])"; }

"$moex" serve --listen 127.0.0.1:0 --state-dir "$state" > "$work/serve.out" 2>&1 &
serve=$!
for _ in $(seq 300); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve.out")"
[ -n "$port" ] || fail "the controller did not start"
export MOEX_CONTROLLER="127.0.0.1:$port"
[ "$(cat "$state/serve.lock")" = "$serve" ] || fail "serve.lock does not hold the controller's pid $serve"
id="$("$moex" job submit --name guarded --world-size 2 --model tiny --steps 100000 --tokens-per-rank 16 --json \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")"
for _ in $(seq 300); do [ "$(state_of "$id")" = JOB_STATE_RUNNING ] && break; sleep 0.1; done
[ "$(state_of "$id")" = JOB_STATE_RUNNING ] || fail "job $id did not start"

# The same state dir. A short heartbeat timeout: had it started, it would
# have killed the job within a second or two.
rc=0
timeout 20 "$moex" serve --listen 127.0.0.1:0 --state-dir "$state" --heartbeat-timeout 1 > "$work/second.out" 2>&1 || rc=$?
echo "  same state dir: exit $rc: $(cat "$work/second.out")"
[ "$rc" = 1 ] || fail "a second controller on $state exited $rc, not 1"
grep -q "state dir '$state' is in use by another moex serve (pid $serve" "$work/second.out" \
  || fail "the refusal does not name the state dir and pid $serve"
sleep 2
[ "$(state_of "$id")" = JOB_STATE_RUNNING ] || fail "job $id did not survive the second controller"

# The same port, another state dir.
rc=0
timeout 20 "$moex" serve --listen "127.0.0.1:$port" --state-dir "$work/other" > "$work/third.out" 2>&1 || rc=$?
echo "  same port: exit $rc: $(grep "moex serve" "$work/third.out")"
[ "$rc" = 1 ] || fail "a second controller on port $port exited $rc, not 1"
grep -q "moex serve: error: cannot listen on 127.0.0.1:$port: in use" "$work/third.out" || fail "the refusal does not say the port is in use"
[ ! -e "$work/other/jobs.db" ] || fail "the refused controller opened its database"
for _ in 1 2 3 4 5; do [ "$(state_of "$id")" = JOB_STATE_RUNNING ] || fail "job $id is not answered by its own controller"; done

# The state dir deleted under the controller.
"$moex" job cancel "$id" > /dev/null
for _ in $(seq 100); do [ "$(state_of "$id")" = JOB_STATE_CANCELLED ] && break; sleep 0.1; done
rm -rf "$state"
rc=0
"$moex" job submit --world-size 1 --model tiny --steps 1 2> "$work/submit.out" || rc=$?
echo "  deleted state dir: exit $rc: $(cat "$work/submit.out")"
[ "$rc" != 0 ] || fail "a job was accepted into a deleted state dir"
grep -q "state dir '$state' is no longer the one this controller opened" "$work/submit.out" || fail "the refusal does not name the state dir"
for _ in $(seq 50); do grep -q "NOT_SERVING" "$work/serve.out" && break; sleep 0.1; done
grep -q "NOT_SERVING" "$work/serve.out" || fail "the controller did not say it stopped serving"

# Reachable from other hosts, nothing asked of clients.
rc=0
timeout 20 "$moex" serve --listen 0.0.0.0:0 --state-dir "$work/open" > "$work/open.out" 2>&1 || rc=$?
echo "  0.0.0.0 without a token: exit $rc: $(cat "$work/open.out")"
[ "$rc" = 1 ] || fail "moex serve --listen 0.0.0.0:0 without a token exited $rc, not 1"
grep -q "moex serve: error: --listen 0.0.0.0:0 is reachable from other hosts.*--token-file.*--insecure" "$work/open.out" \
  || fail "the refusal does not say what to give"
[ ! -e "$work/open" ] || fail "the refused controller made its state dir"

# A token file anyone may read.
printf 's3cret\n' > "$work/token"
chmod 644 "$work/token"
rc=0
timeout 20 "$moex" serve --listen 127.0.0.1:0 --state-dir "$work/tokened" --token-file "$work/token" > "$work/token.out" 2>&1 || rc=$?
echo "  token file 0644: exit $rc: $(cat "$work/token.out")"
[ "$rc" = 1 ] || fail "a token file of mode 0644 was accepted (exit $rc)"
grep -q "the token file '$work/token' is open to others (mode 0644).*chmod 600 $work/token" "$work/token.out" \
  || fail "the refusal does not name the file, its mode and the fix"
rc=0
MOEX_TOKEN_FILE="$work/token" "$moex" job list > /dev/null 2> "$work/client-token.out" || rc=$?
[ "$rc" = 1 ] && grep -q "chmod 600 $work/token" "$work/client-token.out" || fail "moex job used a token file of mode 0644"
echo "serve guards: ok"
