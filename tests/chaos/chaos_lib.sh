# Sourced by every case of the chaos matrix: a real controller, real
# multi-rank jobs, one fault, and what a user must see afterwards.
#   case_X.sh MOEX_BINARY [RESULTS.jsonl]
# A case ends non-zero when the outcome is wrong, when detection took
# longer than its bound, or when a process of the job is left behind; it
# appends {"case", "bound_s", "detected_s", "outcome"} to RESULTS.
set -euo pipefail
moex="$1"
results="${2:-${MOEX_CHAOS_RESULTS:-/dev/null}}"
work="$(mktemp -d)"
serve=""
port=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

chaos_cleanup() {
  if [ -n "$serve" ]; then kill -9 "$serve" 2>/dev/null || true; wait "$serve" 2>/dev/null || true; fi
  # Nothing of this case may outlive it, even when it failed half-way.
  for id in $(cat "$work/jobs" 2>/dev/null); do
    pkill -9 -f "job-id $id" 2>/dev/null || true
    rm -rf "/dev/shm/moex-weights-$(id -u)-$id" "/dev/shm/moex-job-$(id -u)-$id"
  done
  if [ "${CHAOS_FAILED:-0}" = 1 ]; then tail -n 30 "$work"/serve.out "$work"/state/logs/*.log 2>/dev/null || true; fi
  [ -n "${chaos_mount:-}" ] && umount "$chaos_mount" 2>/dev/null || true
  rm -rf "$work"
}
trap 'CHAOS_FAILED=$([ $? -ne 0 ] && echo 1 || echo 0); chaos_cleanup' EXIT

fail() { echo "CHAOS FAIL: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# start_controller [serve flags...]: on $port (0: any), state in $state_dir.
state_dir="$work/state"
start_controller() {
  "$moex" serve --listen "127.0.0.1:${port}" --state-dir "$state_dir" "$@" > "$work/serve.out" 2>&1 &
  serve=$!
  for _ in $(seq 300); do
    if grep -q listening "$work/serve.out"; then
      port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve.out" | tail -1)"
      export MOEX_CONTROLLER="127.0.0.1:${port}"
      return 0
    fi
    kill -0 "$serve" 2>/dev/null || fail "the controller exited: $(cat "$work/serve.out")"
    sleep 0.1
  done
  fail "the controller did not start"
}

# submit [moex job submit flags...] -> prints the job id
submit() {
  local id
  id="$("$moex" job submit --json "$@" | python3 -c "import json,sys; print(json.load(sys.stdin)['id'])")"
  echo "$id" >> "$work/jobs"
  echo "$id"
}

# field ID EXPR: a Python expression over the job's JSON `j`.
field() {
  "$moex" job status "$1" --json 2>/dev/null | python3 -c "
import json, sys
j = json.load(sys.stdin)
m = j.get('metrics', {})
print($2)"
}

# wait_for ID EXPR SECONDS: until EXPR is true, or fail.
wait_for() {
  local deadline=$(( $(date +%s) + $3 ))
  while [ "$(field "$1" "$2" || echo False)" != "True" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "job $1: '$2' not true after $3 s: $(field "$1" "j['state'] + ' | ' + j.get('message', '')")"
    sleep 0.1
  done
}

rank_pid() { field "$1" "[r['pid'] for r in j.get('ranks', []) if r.get('rank', 0) == $2][0]"; }

# detected_s ID SINCE_MS: the controller's end time of the job - SINCE_MS.
detected_s() { field "$1" "'%.2f' % ((int(j['end_time_unix_ms']) - $2) / 1000.0)"; }

assert_message() {
  local message
  message="$(field "$1" "j.get('message', '')")"
  echo "  message: $message"
  grep -Eq "$2" <<<"$message" || fail "job $1: the message does not match /$2/"
}

assert_no_orphans() {
  sleep 0.5
  local left
  left="$(pgrep -f "job-id $1" | wc -l || true)"
  [ "$left" = "0" ] || fail "job $1: $left processes left: $(pgrep -af "job-id $1")"
}

# record CASE BOUND_S DETECTED_S OUTCOME
record() {
  echo "$1: detected in $3 s (bound $2 s): $4"
  python3 -c "import sys; sys.exit(0 if float('$3') <= float('$2') else 1)" || fail "$1: $3 s is over the bound of $2 s"
  python3 -c 'import json, sys; print(json.dumps({"case": sys.argv[1], "bound_s": float(sys.argv[2]),
    "detected_s": float(sys.argv[3]), "outcome": sys.argv[4]}))' "$1" "$2" "$3" "$4" >> "$results"
}
