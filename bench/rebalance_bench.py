#!/usr/bin/env python3
"""Live rebalancing under a skewed (Zipf) workload, measured in one run.

Runs `mpirun -np N moex run` with synthetic tokens whose routing follows a
Zipf law; the first steps serve the contiguous placement (the baseline, timed
in the same run), then a rebalance is planned from the measured load, the
moved experts' weights travel in chunks after each step, and the ranks switch
together. Each policy runs with the same seed, so with the same tokens.

Prints, per policy: rank imbalance (max/mean routed pairs) and step time
before and after (medians), their ratios, experts and bytes migrated and the
time spent migrating; writes JSON, CSV and an SVG plot of step time and
imbalance, step by step.

  bench/rebalance_bench.py [--np 4] [--model mini-dsv3] [--tokens-per-rank 1024]
      [--skew 1.2] [--redundant 8] [--before 12] [--after 12] [--policies refined,eplb]
      [--transport mpi] [--out DIR]
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys


def run(args, policy, out_dir):
    path = os.path.join(out_dir, f"rebalance-{policy}.run.json")
    steps = args.before + args.after + 4  # room for the migration's chunks
    command = [args.mpirun, "-np", str(args.np), "--oversubscribe", "--mca", "btl", "self,vader,tcp",
               args.moex, "run", "--model", args.model, "--transport", args.transport,
               "--tokens-per-rank", str(args.tokens_per_rank), "--routing-skew", str(args.skew),
               "--redundant-experts", str(args.redundant), "--steps", str(steps),
               "--rebalance-at-step", str(args.before), "--rebalance-policy", policy,
               "--rebalance-window", str(min(args.before, 4)), "--json", path, "--quiet"]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    print(f"[{policy}] {' '.join(command)}", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        sys.exit(f"rebalance_bench: {policy}: moex run failed ({done.returncode}):\n{done.stdout[-3000:]}")
    with open(path) as f:
        return json.load(f)


def summarise(policy, result, before):
    steps = result["steps"]
    events = result["rebalances"]
    if len(events) != 1 or events[0]["live_from_step"] < 0:
        sys.exit(f"rebalance_bench: {policy}: expected one rebalance that went live, got {events}")
    event = events[0]
    live = event["live_from_step"]  # 0-based index of the first step on the new placement
    # Before: after one warm-up step, up to the decision; after: from live on.
    base = steps[1:before]
    new = steps[live:]
    med = lambda rows, key: statistics.median(r[key] for r in rows)
    out = {
        "policy": policy,
        "steps_before": len(base), "steps_after": len(new),
        "imbalance_before": med(base, "imbalance"), "imbalance_after": med(new, "imbalance"),
        "step_ms_before": 1e3 * med(base, "seconds"), "step_ms_after": 1e3 * med(new, "seconds"),
        "experts_moved": event["experts_moved"], "bytes_migrated": event["bytes"],
        "migration_ms": 1e3 * event["migration_seconds"], "chunks": event["chunks"],
        "predicted_imbalance_before": event["window_imbalance_before"],
        "predicted_imbalance_after": event["window_imbalance_after"],
        "migration_steps": list(range(event["decided_before_step"], live)),
    }
    out["step_time_ratio_after_over_before"] = out["step_ms_after"] / out["step_ms_before"]
    out["imbalance_ratio_after_over_before"] = out["imbalance_after"] / out["imbalance_before"]
    return out


def svg(series, path, title):
    """A small two-panel line plot: step time and imbalance per step."""
    width, height, pad = 760, 520, 60
    panel = (height - 3 * pad // 2) // 2
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']
    for p, (key, label) in enumerate([("ms", "step time (ms, slowest rank)"), ("imbalance", "rank imbalance (max/mean)")]):
        top = 30 + p * (panel + pad // 2)
        values = [v for s in series.values() for v in s[key]]
        lo, hi = 0.0, max(values) * 1.1
        n = max(len(s[key]) for s in series.values())
        x = lambda i: pad + (width - 2 * pad) * i / max(1, n - 1)
        y = lambda v: top + panel - panel * (v - lo) / (hi - lo or 1)
        parts.append(f'<rect x="{pad}" y="{top}" width="{width - 2 * pad}" height="{panel}" fill="none" stroke="#999"/>')
        parts.append(f'<text x="{pad}" y="{top - 4}">{label}</text>')
        for t in range(5):
            v = lo + (hi - lo) * t / 4
            parts.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>')
        for c, (name, s) in enumerate(series.items()):
            pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(s[key]))
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colours[c % 4]}" stroke-width="2"/>')
            for m in s["migration"]:
                parts.append(f'<rect x="{x(m) - 3:.1f}" y="{top}" width="6" height="{panel}" fill="{colours[c % 4]}" opacity="0.15"/>')
            if p == 0:
                parts.append(f'<text x="{width - pad - 150}" y="{top + 16 + 14 * c}" fill="{colours[c % 4]}">{name}</text>')
        parts.append(f'<text x="{width / 2}" y="{top + panel + 16}" text-anchor="middle">step (shaded: migrating)</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moex", default=os.path.join(here, "..", "build", "default", "bin", "moex"))
    parser.add_argument("--mpirun", default="mpirun")
    parser.add_argument("--np", type=int, default=4)
    parser.add_argument("--model", default="mini-dsv3")
    parser.add_argument("--tokens-per-rank", type=int, default=1024)
    parser.add_argument("--skew", type=float, default=1.2)
    parser.add_argument("--redundant", type=int, default=8)
    parser.add_argument("--before", type=int, default=12)
    parser.add_argument("--after", type=int, default=12)
    parser.add_argument("--policies", default="refined,eplb")
    parser.add_argument("--transport", default="mpi")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows, series = [], {}
    for policy in args.policies.split(","):
        result = run(args, policy, args.out)
        row = summarise(policy, result, args.before)
        rows.append(row)
        series[policy] = {"ms": [1e3 * s["seconds"] for s in result["steps"]],
                          "imbalance": [s["imbalance"] for s in result["steps"]],
                          "migration": row["migration_steps"]}
    print(f"{args.np} ranks, {args.model}, {args.tokens_per_rank} tokens/rank, Zipf skew {args.skew}, "
          f"+{args.redundant} redundant slots, {args.transport}")
    print("| policy | imbalance before | after | ratio | step ms before | after | ratio | experts moved | migrated | migration ms | chunks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['imbalance_before']:.3f} | {r['imbalance_after']:.3f} | "
              f"{r['imbalance_ratio_after_over_before']:.3f} | {r['step_ms_before']:.2f} | {r['step_ms_after']:.2f} | "
              f"{r['step_time_ratio_after_over_before']:.3f} | {r['experts_moved']} | {r['bytes_migrated'] / 2**20:.1f} MiB | "
              f"{r['migration_ms']:.1f} | {r['chunks']} |")
    config = {k: getattr(args, k) for k in ("np", "model", "tokens_per_rank", "skew", "redundant", "before", "after", "transport")}
    with open(os.path.join(args.out, "rebalance.json"), "w") as f:
        json.dump({"config": config, "results": rows}, f, indent=1)
    with open(os.path.join(args.out, "rebalance.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "migration_steps"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    svg(series, os.path.join(args.out, "rebalance.svg"),
        f"Live rebalancing, {args.np} ranks, {args.model}, Zipf {args.skew}")
    print(f"wrote {args.out}/rebalance.json, rebalance.csv, rebalance.svg", file=sys.stderr)


if __name__ == "__main__":
    main()
