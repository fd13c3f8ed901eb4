#!/usr/bin/env bash
# The controller crashes (SIGKILL) while a job runs and comes back on the same
# state dir and port: the job keeps running, its ranks report back in, it is
# re-adopted, and it ends SUCCEEDED with no process left.
set -euo pipefail
moex="$1"
state="$(mktemp -d)"
port=0  # the controller picks a free one; we read it back
serve=""
start_serve() {
  "$moex" serve --listen "127.0.0.1:${port}" --state-dir "$state" --heartbeat-timeout 40 > "$state/serve.out" 2>&1 &
  serve=$!
  for _ in $(seq 300); do
    if grep -q listening "$state/serve.out"; then
      port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$state/serve.out")"
      export MOEX_CONTROLLER="127.0.0.1:${port}"
      return
    fi
    sleep 0.1
  done
  echo "the controller did not start"; cat "$state/serve.out"; exit 1
}
trap '[ -n "$serve" ] && kill $serve 2>/dev/null; wait 2>/dev/null || true; tail -20 "$state"/logs/*.log; rm -rf "$state"' EXIT
status() { "$moex" job status "$1" --json | python3 -c "import json,sys; j=json.load(sys.stdin); print(j['state'], '|', j['message'])"; }

start_serve
id="$("$moex" job submit --name survivor --world-size 2 --model mini-dsv3 --steps 120 --tokens-per-rank 128 --json \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")"
for _ in $(seq 300); do status "$id" | grep -q RUNNING && break; sleep 0.1; done
sleep 1
kill -9 $serve; wait $serve 2>/dev/null || true
echo "controller killed while $id ran: $(ps aux | grep -c "[j]ob-id $id") processes of the job still run"
sleep 1
start_serve
status "$id"
for _ in $(seq 450); do status "$id" | grep -q "re-adopted\|SUCCEEDED\|FAILED" && break; sleep 0.1; done
status "$id" | tee /dev/stderr | grep -q "re-adopted\|SUCCEEDED"
for _ in $(seq 1200); do status "$id" | grep -q "JOB_STATE_SUCCEEDED\|JOB_STATE_FAILED" && break; sleep 0.1; done
final="$(status "$id")"
echo "$final"
grep -q "JOB_STATE_SUCCEEDED | succeeded: all 120 steps reported" <<<"$final"
sleep 0.5
left="$(ps aux | grep -c "[j]ob-id $id" || true)"
[ "$left" = "0" ] || { echo "$left processes of the job are left"; exit 1; }
echo "restart session: ok"
