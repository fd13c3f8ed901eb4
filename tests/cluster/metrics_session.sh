#!/usr/bin/env bash
# Prometheus metrics, end to end: moex serve --metrics-listen, a running
# job, a real Prometheus server (Debian's `prometheus`) scraping the
# controller every second, and the job's tokens/s and per-expert tokens read
# back through Prometheus's HTTP query API. Then `moex run --metrics-listen`
# (no controller) answers the same per-job names. Bad --metrics-listen values
# are refused, saying which flag.
#
#   metrics_session.sh MOEX [PLOT.png]   PLOT: also render the panels
#                                        (bench/metrics_panels.py)
set -euo pipefail
moex="$1"
plot="${2:-}"
if ! command -v prometheus > /dev/null; then
  echo "SKIP: no prometheus binary (Debian package prometheus; scripts/setup.sh installs it)"
  exit 77
fi
state="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT

# get URL: the body, or a failure after 5 s.
get() { curl --silent --show-error --fail --max-time 5 "$1"; }

# Refusals first: they must say which flag and why, and start nothing.
if "$moex" serve --listen 127.0.0.1:0 --state-dir "$state/bad" --metrics-listen nonsense > "$state/err" 2>&1; then
  echo "a malformed --metrics-listen was accepted"; exit 1
fi
grep -q -- "--metrics-listen 'nonsense' is not HOST:PORT" "$state/err" || { cat "$state/err"; exit 1; }

"$moex" serve --listen 127.0.0.1:0 --state-dir "$state/serve" --metrics-listen 127.0.0.1:0 > "$state/serve.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "metrics at" "$state/serve.out" && break; sleep 0.1; done
port="$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$state/serve.out")"
metrics="$(sed -n 's|.*metrics at http://\([^/]*\)/metrics.*|\1|p' "$state/serve.out")"
[ -n "$metrics" ] || { cat "$state/serve.out"; echo "no metrics address printed"; exit 1; }
export MOEX_CONTROLLER="127.0.0.1:${port}"

# The address in use is refused, naming the flag.
if "$moex" serve --listen 127.0.0.1:0 --state-dir "$state/second" --metrics-listen "$metrics" > "$state/err" 2>&1; then
  echo "a second controller served metrics on a bound port"; exit 1
fi
grep -q -- "--metrics-listen: cannot serve metrics on $metrics" "$state/err" || { cat "$state/err"; exit 1; }

# A job that ended, and one that runs (skewed, so that the heatmap shows it).
"$moex" job submit --name short --world-size 2 --model tiny --steps 2 --wait > /dev/null
out="$("$moex" job submit --name long --world-size 2 --model tiny --steps 1000000 --routing-skew 1.5 \
  --redundant-experts 2 --rebalance-threshold 1.05)"
id="$(awk '/^submitted/ {print $2}' <<<"$out")"
for _ in $(seq 300); do "$moex" job status "$id" | grep -q "load: window" && break; sleep 0.1; done

get "http://$metrics/metrics" > "$state/scrape"
grep -q "^moex_jobs{state=\"succeeded\"} 1" "$state/scrape" || { grep moex_jobs "$state/scrape"; exit 1; }
grep -q "^moex_jobs{state=\"running\"} 1" "$state/scrape"
grep -q "^moex_jobs_ended_total{state=\"succeeded\",reason=\"succeeded\"} 1" "$state/scrape"
grep -q "^moex_job_submits_total{outcome=\"accepted\"} 2" "$state/scrape"
grep -q "^grpc_server_handled_total{grpc_service=\"moex.v1.JobService\",grpc_method=\"SubmitJob\",grpc_code=\"OK\"} 2" "$state/scrape"
grep -q "^moex_job_tokens_per_second{job_id=\"$id\"} [1-9]" "$state/scrape"
grep -q "^moex_rank_heartbeat_age_seconds{job_id=\"$id\",rank=\"1\"} " "$state/scrape"
grep -q "^process_resident_memory_bytes [1-9]" "$state/scrape"
experts="$(grep -c "^moex_expert_tokens{job_id=\"$id\",layer=\"first\",expert=\"[0-9]*\"}" "$state/scrape")"
[ "$experts" -ge 8 ] || { echo "moex_expert_tokens has $experts series for job $id"; exit 1; }
# Each family once, with its HELP and TYPE (Prometheus refuses repeats).
dups="$(grep '^# TYPE' "$state/scrape" | sort | uniq -d)"
[ -z "$dups" ] || { echo "families repeated: $dups"; exit 1; }

# A real Prometheus scraping the controller once a second.
read -r prom_port < <(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$state/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: moex
    static_configs:
      - targets: ['$metrics']
EOF
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" > "$state/prometheus.log" 2>&1 &
pids+=($!)
query() {
  curl --silent --fail --max-time 5 --get "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"
}
value=""
for _ in $(seq 120); do
  body="$(query "moex_job_tokens_per_second{job_id=\"$id\"}" || true)"
  value="$(python3 -c 'import json,sys
r = json.loads(sys.argv[1] or "{}").get("data", {}).get("result", [])
print(r[0]["value"][1] if r else "")' "$body")"
  [ -n "$value" ] && break
  sleep 0.5
done
[ -n "$value" ] || { tail -20 "$state/prometheus.log"; echo "Prometheus never had moex_job_tokens_per_second"; exit 1; }
python3 -c 'import sys; assert float(sys.argv[1]) > 0, sys.argv[1]' "$value"
echo "prometheus read moex_job_tokens_per_second{job_id=\"$id\"} = $value"
body="$(query "count(moex_expert_tokens{job_id=\"$id\"})")"
count="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"]["result"][0]["value"][1])' "$body")"
[ "$count" = "$experts" ] || { echo "Prometheus has $count expert series, the scrape had $experts"; exit 1; }
# The scrape target is healthy (up == 1).
body="$(query 'up{job="moex"}')"
python3 -c 'import json,sys; assert json.loads(sys.argv[1])["data"]["result"][0]["value"][1] == "1"' "$body"

# Every query of the Grafana dashboard is one Prometheus accepts, and the
# job's panels have data (Grafana itself is not installed here).
python3 - "$(dirname "$0")/../../docs/grafana/moex.json" "$prom_port" "$id" <<'PY'
import json, sys, urllib.parse, urllib.request
dashboard, port, job = sys.argv[1], sys.argv[2], sys.argv[3]
empty = []
for panel in json.load(open(dashboard))["panels"]:
    for target in panel["targets"]:
        expr = target["expr"].replace("$job_id", job)
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", (panel["title"], expr, body)
        if "job_id" in expr and not body["data"]["result"]:
            empty.append(f"{panel['title']}: {expr}")
assert not empty, "dashboard queries with no data for the running job: " + "; ".join(empty)
print("grafana dashboard: every query accepted by Prometheus, the job's panels have data")
PY

if [ -n "$plot" ]; then
  sleep "${MOEX_PLOT_SECONDS:-30}"  # let the series grow, and a rebalance or two happen
  /usr/bin/python3 "$(dirname "$0")/../../bench/metrics_panels.py" --prometheus "http://127.0.0.1:$prom_port" \
    --job-id "$id" --minutes "$(( (${MOEX_PLOT_SECONDS:-30} + 59) / 60 ))" --out "$plot" --csv "${plot%.png}.csv"
fi
"$moex" job cancel "$id" > /dev/null

# moex run without a controller: rank 0 serves the same names.
mpirun -np 2 --oversubscribe "$moex" run --model tiny --steps 1000000 --tokens-per-rank 64 --quiet \
  --metrics-listen 127.0.0.1:0 > "$state/run.out" 2>&1 &
pids+=($!)
run_metrics=""
for _ in $(seq 200); do
  run_metrics="$(sed -n 's|.*metrics at http://\([^/]*\)/metrics.*|\1|p' "$state/run.out")"
  [ -n "$run_metrics" ] && get "http://$run_metrics/metrics" 2> /dev/null | grep -q '^moex_job_step{job_id="run"} [1-9]' && break
  sleep 0.1
done
get "http://$run_metrics/metrics" > "$state/run_scrape" || { cat "$state/run.out"; exit 1; }
grep -q '^moex_job_step{job_id="run"} [1-9]' "$state/run_scrape" || { cat "$state/run.out" "$state/run_scrape"; exit 1; }
grep -q '^moex_job_tokens_per_second{job_id="run"} [1-9]' "$state/run_scrape"
grep -q '^moex_expert_tokens{job_id="run",layer="first",expert="0"} ' "$state/run_scrape"
echo "metrics session: ok"
