#!/usr/bin/env bash
# A user's session with the real binaries: moex serve, then moex job submit
# --wait, list (one page at a time too), status, logs, bad input, rebalance,
# delete; the controller stops cleanly.
set -euo pipefail
moex="$1"
state="$(mktemp -d)"
port=0  # the controller picks a free one; we read it back
"$moex" serve --listen "127.0.0.1:${port}" --state-dir "$state" > "$state/serve.out" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null || true; wait $serve 2>/dev/null || true; rm -rf "$state"' EXIT
for _ in $(seq 100); do grep -q listening "$state/serve.out" && break; sleep 0.1; done
port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$state/serve.out")"
export MOEX_CONTROLLER="127.0.0.1:${port}"

out="$("$moex" job submit --name cli --world-size 2 --model tiny --steps 2 --wait)"
echo "$out"
grep -q "SUCCEEDED" <<<"$out"
id="$(awk '/^submitted/ {print $2}' <<<"$out")"
"$moex" job list | grep -q "$id.*SUCCEEDED"
"$moex" job status "$id" --json | grep -q '"state": "JOB_STATE_SUCCEEDED"'
"$moex" job logs "$id" | grep -q "worker --job-id $id"
if "$moex" job submit --name 'x;y' 2> "$state/err"; then echo "a bad name was accepted"; exit 1; fi
grep -q "spec.name" "$state/err"
# A number too large for its field is refused by the CLI, never truncated
# (the API's world_size, steps, ... are int32; seed is uint64).
if "$moex" job submit --world-size 4294967298 --model tiny 2> "$state/err"; then echo "a 64-bit world size was accepted"; exit 1; fi
grep -q "Could not convert: --world-size = 4294967298" "$state/err"
for seed in -1 18446744073709551616; do
  if "$moex" job submit --world-size 2 --model tiny --seed "$seed" 2> "$state/err"; then echo "seed $seed was accepted"; exit 1; fi
  grep -q "'$seed' is not an integer from 0 to 18446744073709551615" "$state/err"
done
if "$moex" job status j-missing 2> "$state/err"; then echo "a missing job was found"; exit 1; fi
grep -q "no job 'j-missing'" "$state/err"

# Rebalancing on request: a long job, its load reported, then moex job
# rebalance; status shows the new version serving; the job is cancelled.
out="$("$moex" job submit --name rb --world-size 2 --model tiny --steps 100000 --redundant-experts 2 --routing-skew 1.2)"
id="$(awk '/^submitted/ {print $2}' <<<"$out")"
for _ in $(seq 200); do "$moex" job status "$id" | grep -q "load: window" && break; sleep 0.1; done
"$moex" job rebalance "$id" | grep -q "placement version 2 published"
for _ in $(seq 200); do "$moex" job status "$id" | grep -q "version 2 serving" && break; sleep 0.1; done
"$moex" job status "$id" | tee "$state/status"
grep -q "version 2 serving" "$state/status"
grep -q "rebalance v2 at step [0-9]* (refined, requested)" "$state/status"
"$moex" job cancel "$id" > /dev/null
if "$moex" job rebalance j-missing 2> "$state/err"; then echo "a missing job was rebalanced"; exit 1; fi
grep -q "no job 'j-missing'" "$state/err"

# One page at a time, then deleting an ended job (its record and log).
first="$("$moex" job list | awk 'NR == 2 {print $1}')"
"$moex" job list --page-size 1 > "$state/page" 2> "$state/next"
[ "$(grep -c '^j-' "$state/page")" = 1 ] || { echo "--page-size 1 printed $(grep -c '^j-' "$state/page") jobs"; exit 1; }
token="$(sed -n 's/.*--page-token \([^ ]*\)$/\1/p' "$state/next")"
[ -n "$token" ] || { echo "no next page after one job: $(cat "$state/next")"; exit 1; }
"$moex" job list --page-size 1 --page-token "$token" 2> /dev/null | grep -q "^$id"
for _ in $(seq 100); do "$moex" job delete "$first" > "$state/deleted" 2> "$state/err" && break; sleep 0.2; done
grep -q "deleted $first (SUCCEEDED)" "$state/deleted"
[ ! -e "$state/logs/$first.log" ] || { echo "the deleted job's log is still there"; exit 1; }
if "$moex" job status "$first" 2> "$state/err"; then echo "a deleted job was found"; exit 1; fi
kill -TERM $serve
wait $serve
grep -q "stopping" "$state/serve.out"
echo "cli session: ok"
