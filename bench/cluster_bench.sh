#!/usr/bin/env bash
# Dispatch + combine across hosts: the hierarchical path against the flat one
# (per peer), both against MPI_Alltoallv moving the flat path's bytes, in the
# same runs (moex bench interleaves the three repetition by repetition), on
# an unshaped link and on one shaped to RATE a host.
#
#   bench/cluster_bench.sh [--moex BIN] [--out DIR] [--hosts 4] [--ranks-per-host 2]
#                          [--rate 2gbit] [--tokens 512] [--hidden 2048] [--top-k 6,8]
#                          [--experts 64] [--reps 10] [--links unshaped,shaped] [--hostfile FILE]
#
# Without --hostfile it stands up a virtual cluster of namespace hosts on
# this machine (tests/cluster/vcluster, needs root), shapes every host's link
# with tc tbf for the shaped run, and tears the cluster down at the end. With
# --hostfile it runs on those (real) hosts, unshaped only, with plain mpirun.
# Writes DIR/{unshaped,shaped}/results.{json,csv} (moex bench sweep) and
# DIR/summary.{md,csv} and DIR/hierarchical_vs_flat.svg.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
moex="$here/build/ci/bin/moex" out="bench-results/cluster" hosts=4 per_host=2 rate=2gbit
tokens=512 hidden=2048 top_k=6,8 experts=64 reps=10 hostfile="" links_asked=unshaped,shaped
while (($#)); do
  case "$1" in
    --moex) moex="$2" ;;
    --out) out="$2" ;;
    --hosts) hosts="$2" ;;
    --ranks-per-host) per_host="$2" ;;
    --rate) rate="$2" ;;
    --tokens) tokens="$2" ;;
    --hidden) hidden="$2" ;;
    --top-k) top_k="$2" ;;
    --experts) experts="$2" ;;
    --reps) reps="$2" ;;
    --hostfile) hostfile="$2" ;;
    --links) links_asked="$2" ;;
    *) echo "cluster_bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[[ -x "$moex" ]] || { echo "cluster_bench.sh: no moex at $moex (build first, or --moex BIN)" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ranks=$((hosts * per_host))
vcluster="$here/tests/cluster/vcluster/vcluster.sh"
name=benchvc
links=(unshaped)
mpirun_args=()
if [[ -z "$hostfile" ]]; then
  "$vcluster" check
  trap '"$vcluster" down "$name" >/dev/null 2>&1 || true' EXIT
  "$vcluster" up --replace "$name" "$hosts" "$per_host"
  hostfile="$("$vcluster" hostfile "$name")"
  mapfile -t mpirun_args < <("$vcluster" mpirun-args "$name")
  IFS=, read -r -a links <<<"$links_asked"
fi

for link in "${links[@]}"; do
  if [[ "$link" == shaped ]]; then
    for ((h = 0; h < hosts; h++)); do "$vcluster" shape "$name" "h$h" "$rate" 0; done
  fi
  echo "== $link link: $ranks ranks on $hosts hosts ($per_host a host), top-k $top_k" >&2
  "$moex" bench sweep --ranks "$ranks" --transports mpi --tokens "$tokens" --hidden "$hidden" --top-k "$top_k" \
    --experts "$experts" --no-layer --reps "$reps" --warmup 2 --run-timeout 1200 \
    --mpirun-args "${mpirun_args[*]} --mca mpi_yield_when_idle 1 --hostfile $hostfile --map-by slot" --out "$out/$link"
done

python3 - "$out" "$rate" "$(nproc)" "${links[@]}" <<'PY'
import json, os, sys
out, rate, cores, links = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = []
for link in links:
    for r in json.load(open(os.path.join(out, link, "results.json")))["results"]:
        h = r.get("hierarchical")
        if not h:
            sys.exit(f"{link}: a point ran without the hierarchical path (ranks on one host?)")
        rows.append(dict(link=link if link == "unshaped" else f"shaped {rate}/host", ranks=r["ranks"], hosts=r["hosts"],
                         top_k=r["top_k"], hidden=r["hidden"], tokens=r["tokens_per_rank"], reps=r["reps"],
                         flat_us=r["ours_us"], hier_us=h["ours_us"], mpi_us=r["baseline_us"],
                         hier_vs_flat=h["vs_flat"], hier_vs_mpi=h["vs_baseline"], flat_vs_mpi=r["ratio"],
                         flat_bytes=r["internode_bytes_per_rank"], hier_bytes=h["internode_bytes_per_rank"],
                         floor=r["internode_floor_bytes_per_rank"]))
def stat(s): return f"{s['median']:.0f} ({s['p10']:.0f}-{s['p90']:.0f})"
def ratio(s): return f"{s['median']:.2f} ({s['p10']:.2f}-{s['p90']:.2f})"
def mib(b): return f"{b / 2**20:.2f}"
lines = [f"Dispatch + combine across hosts, each point median of {rows[0]['reps']} repetitions "
         f"(p10-p90 in brackets), the slowest rank's time; {cores} cores on the machine; ratios per repetition.",
         "Bytes between hosts: dispatch + combine, per rank, each byte once; floor: distinct (token, remote host) "
         "pairs x hidden x 4 (dispatch only).", "",
         "| link | ranks/hosts | tokens/rank | top-k | flat us | hierarchical us | MPI_Alltoallv us | hier/flat | hier/MPI | flat/MPI | "
         "internode MiB/rank flat | hierarchical | dispatch floor |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['link']} | {r['ranks']}/{r['hosts']} | {r['tokens']} | {r['top_k']} | {stat(r['flat_us'])} | {stat(r['hier_us'])} | "
                 f"{stat(r['mpi_us'])} | {ratio(r['hier_vs_flat'])} | {ratio(r['hier_vs_mpi'])} | "
                 f"{ratio(r['flat_vs_mpi'])} | {mib(r['flat_bytes'])} | {mib(r['hier_bytes'])} | {mib(r['floor'])} |")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
with open(os.path.join(out, "summary.csv"), "w") as f:
    f.write("link,ranks,hosts,tokens_per_rank,top_k,flat_us,hier_us,mpi_us,hier_vs_flat,hier_vs_mpi,flat_vs_mpi,"
            "flat_internode_bytes,hier_internode_bytes,floor_bytes\n")
    for r in rows:
        f.write(f"{r['link']},{r['ranks']},{r['hosts']},{r['tokens']},{r['top_k']},{r['flat_us']['median']:.1f},"
                f"{r['hier_us']['median']:.1f},{r['mpi_us']['median']:.1f},{r['hier_vs_flat']['median']:.4f},"
                f"{r['hier_vs_mpi']['median']:.4f},{r['flat_vs_mpi']['median']:.4f},{r['flat_bytes']:.0f},"
                f"{r['hier_bytes']:.0f},{r['floor']:.0f}\n")
# Grouped bars: per (link, top-k), flat / hierarchical / MPI_Alltoallv medians
# with p10-p90 whiskers.
groups = [(f"{r['link']}, {r['tokens']} tok, top-{r['top_k']}", r) for r in rows]
series = [("flat", "flat_us", "#888"), ("hierarchical", "hier_us", "#2a7"), ("MPI_Alltoallv", "mpi_us", "#47c")]
top = max(r[key]["p90"] for _, r in groups for _, key, _ in series) * 1.1
W, H, left, bottom = 170 * len(groups) + 120, 360, 70, 300
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13">dispatch + combine across hosts '
       f'(median of {rows[0]["reps"]}, p10-p90; {rows[0]["ranks"]} ranks on {rows[0]["hosts"]} hosts)</text>',
       f'<line x1="{left}" y1="{bottom}" x2="{W - 20}" y2="{bottom}" stroke="black"/>',
       f'<line x1="{left}" y1="30" x2="{left}" y2="{bottom}" stroke="black"/>']
for i in range(6):
    v = top * i / 5
    y = bottom - (bottom - 30) * i / 5
    svg.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{v / 1000:.1f} ms</text>')
for g, (label, r) in enumerate(groups):
    x0 = left + 20 + 170 * g
    for s, (name, key, color) in enumerate(series):
        st = r[key]
        x = x0 + 34 * s
        y = bottom - (bottom - 30) * st["median"] / top
        svg.append(f'<rect x="{x}" y="{y:.1f}" width="28" height="{bottom - y:.1f}" fill="{color}"/>')
        y10, y90 = (bottom - (bottom - 30) * st[q] / top for q in ("p10", "p90"))
        svg.append(f'<line x1="{x + 14}" y1="{y10:.1f}" x2="{x + 14}" y2="{y90:.1f}" stroke="black"/>')
    svg.append(f'<text x="{x0 + 50}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
    svg.append(f'<text x="{x0 + 50}" y="{bottom + 30}" text-anchor="middle">hier/flat {r["hier_vs_flat"]["median"]:.2f}</text>')
for s, (name, _, color) in enumerate(series):
    svg.append(f'<rect x="{left + 10 + 120 * s}" y="{H - 18}" width="10" height="10" fill="{color}"/>'
               f'<text x="{left + 24 + 120 * s}" y="{H - 9}">{name}</text>')
svg.append("</svg>")
open(os.path.join(out, "hierarchical_vs_flat.svg"), "w").write("\n".join(svg) + "\n")
print("\n".join(lines))
print(f"wrote {out}/summary.md, summary.csv, hierarchical_vs_flat.svg", file=sys.stderr)
PY
