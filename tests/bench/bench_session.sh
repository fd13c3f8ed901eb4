#!/usr/bin/env bash
# `moex bench` as a user runs it: a weak-scaling sweep under mpirun (1 and 2
# ranks), its JSON, CSV and plots; report and calibrate on them; bad input;
# then the same benchmark as a job through a controller, whose status
# carries the points.
set -euo pipefail
moex="$1"
work="$(mktemp -d)"
serve=""
trap '[ -n "$serve" ] && kill $serve 2>/dev/null; [ -n "$serve" ] && wait $serve 2>/dev/null; rm -rf "$work"' EXIT

"$moex" bench sweep --ranks 1,2 --tokens 64,128 --hidden 64 --experts 8 --expert-width 32 --reps 2 --warmup 1 \
  --out "$work/sweep" > "$work/sweep.out" 2> "$work/sweep.err"
cat "$work/sweep.out"
for f in results.json results.csv results.md latency.svg bandwidth.svg efficiency.svg; do test -s "$work/sweep/$f"; done
test "$(wc -l < "$work/sweep/results.csv")" -eq 5   # header + 2 rank counts x 2 sizes
grep -q "points" "$work/sweep.err"                    # the progress bar
grep -q "^mpi  *2  *128 .*shared memory$" "$work/sweep.out"   # the path each row took
grep -q "</svg>" "$work/sweep/efficiency.svg"

"$moex" bench report --results "$work/sweep/results.json" --out "$work/again" | grep -q "results.csv"
cmp <(cut -d, -f1-11 "$work/sweep/results.csv") <(cut -d, -f1-11 "$work/again/results.csv")
# Calibrating needs two multi-rank fit points: fit on 64 tokens, predict 128.
"$moex" bench calibrate --results "$work/sweep/results.json" --fit-tokens 64 --out "$work/profile.json" \
  2> "$work/cal.err" | tee "$work/cal.out" || true
if grep -q "at least 2 fit points" "$work/cal.err"; then
  echo "calibration refused one fit point, as it should"
else
  grep -q "held-out points" "$work/cal.out"
fi

# Bad input: named, no run started.
if "$moex" bench sweep --ranks 2,3 --scaling strong --total-tokens 100 --out "$work/bad" 2> "$work/err"; then
  echo "an uneven strong-scaling split was accepted"; exit 1
fi
grep -q "unevenly" "$work/err"
if "$moex" bench sweep --ranks 4 --experts 2 --top-k 1 --out "$work/bad" 2> "$work/err"; then
  echo "more ranks than experts was accepted"; exit 1
fi
grep -q "2 experts cannot be spread over 4 ranks" "$work/err"
test ! -e "$work/bad/raw/ranks4-mpi.jsonl"

# Through the control plane.
"$moex" serve --listen 127.0.0.1:0 --state-dir "$work/state" > "$work/serve.out" 2>&1 &
serve=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
export MOEX_CONTROLLER="127.0.0.1:$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/serve.out")"
out="$("$moex" job submit --name bench --world-size 2 --bench --bench-tokens 64,96 --bench-hidden 64 \
  --bench-experts 8 --bench-expert-width 32 --bench-reps 2 --wait)"
echo "$out"
grep -q SUCCEEDED <<<"$out"
id="$(awk '/^submitted/ {print $2}' <<<"$out")"
"$moex" job status "$id" | tee "$work/status"
grep -q "bench of 2 points" "$work/status"
grep -q "^ *96 *64 *4 *8 *32 .*shared memory$" "$work/status"   # each point with the path its rows took
grep -q "ratios of the medians" "$work/status"
"$moex" job status "$id" --json > "$work/job.json"
"$moex" bench report --results "$work/job.json" --out "$work/fromjob" > /dev/null
test "$(wc -l < "$work/fromjob/results.csv")" -eq 3
if "$moex" job submit --world-size 2 --bench --bench-experts 1 2> "$work/err"; then
  echo "a bench job with top-k over its experts was accepted"; exit 1
fi
grep -q "spec.bench" "$work/err"
echo "bench session: ok"
