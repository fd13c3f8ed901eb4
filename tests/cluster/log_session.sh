#!/usr/bin/env bash
# Logs, one line an event: moex serve --log-format json writes a JSON object
# a line on stderr for each job's submission, launch, start and end, and a
# refused submission; a failing moex run says its error once however many
# ranks hit it (text, and JSON with --log-format json).
set -euo pipefail
moex="$1"
state="$(mktemp -d)"
serve=""
trap '[ -n "$serve" ] && { kill $serve 2>/dev/null || true; wait $serve 2>/dev/null || true; }; rm -rf "$state"' EXIT

if "$moex" serve --state-dir "$state/x" --log-format yaml > "$state/err" 2>&1; then echo "--log-format yaml was accepted"; exit 1; fi
grep -q -- "--log-format: yaml not in {text,json}" "$state/err" || { cat "$state/err"; exit 1; }

"$moex" serve --listen 127.0.0.1:0 --state-dir "$state/serve" --log-format json > "$state/serve.out" 2> "$state/serve.log" &
serve=$!
for _ in $(seq 100); do grep -q listening "$state/serve.out" && break; sleep 0.1; done
export MOEX_CONTROLLER="127.0.0.1:$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$state/serve.out")"
id="$("$moex" job submit --name logged --world-size 2 --model tiny --steps 2 --wait | awk '/^submitted/ {print $2}')"
if "$moex" job submit --name 'bad name' --model tiny 2> /dev/null; then echo "a bad name was accepted"; exit 1; fi
kill -TERM $serve
wait $serve
serve=""
python3 - "$state/serve.log" "$id" <<'PY'
import json, sys
path, job = sys.argv[1], sys.argv[2]
events = []
for n, line in enumerate(open(path), 1):
    try:
        e = json.loads(line)
    except ValueError as error:
        sys.exit(f"{path}:{n}: not JSON ({error}): {line!r}")
    for key in ("time", "level", "component", "msg"):
        assert key in e, f"{path}:{n}: no '{key}': {line!r}"
    events.append(e)
mine = [e["msg"] for e in events if e.get("job_id") == job]
want = ["job submitted", "job launched", "job running: every rank registered", "job ended"]
assert mine == want, f"job {job}'s events: {mine}, expected {want}"
ended = [e for e in events if e.get("job_id") == job and e["msg"] == "job ended"][0]
assert ended["state"] == "JOB_STATE_SUCCEEDED" and ended["reason"] == "END_REASON_SUCCEEDED", ended
refused = [e for e in events if e["msg"] == "submit refused"]
assert len(refused) == 1 and refused[0]["code"] == "INVALID_ARGUMENT" and "spec.name" in refused[0]["why"], refused
print(f"serve log: {len(events)} JSON events, job {job}: {', '.join(mine)}")
PY

# Three ranks, the same bad input: one line says it.
if mpirun -np 3 --oversubscribe "$moex" run --model tiny --steps 1 --weights "$state/absent.safetensors" \
  > "$state/run.out" 2>&1; then echo "a run of absent weights succeeded"; exit 1; fi
said="$(grep -c "^moex run: rank [0-2]: error: --weights cannot be read" "$state/run.out" || true)"
[ "$said" = 1 ] || { cat "$state/run.out"; echo "the error was said $said times, not once"; exit 1; }
if mpirun -np 2 --oversubscribe "$moex" run --model tiny --steps 1 --weights "$state/absent.safetensors" \
  --log-format json > "$state/run.out" 2>&1; then echo "a run of absent weights succeeded"; exit 1; fi
grep '^{' "$state/run.out" | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin]
assert len(lines) == 1, lines
e = lines[0]
assert e["level"] == "error" and e["component"] == "run" and e["code"] == "INVALID_ARGUMENT", e
assert "--weights cannot be read" in e["msg"], e
print("run log:", e["msg"])'
echo "log session: ok"
