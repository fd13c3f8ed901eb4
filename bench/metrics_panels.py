#!/usr/bin/env python3
"""Renders the panels of docs/grafana/moex.json from a Prometheus server.

Grafana cannot be installed on the machines moex is built on, so the same
queries the dashboard runs are run here against Prometheus's HTTP API
(/api/v1/query_range) and drawn with matplotlib: tokens/s, dispatch and
combine seconds, imbalance and balancedness, the per-expert load heatmap
(moex_expert_tokens) and the ranks' heartbeat age.

  metrics_panels.py --prometheus http://127.0.0.1:9090 --job-id j-... \
      [--minutes 5] [--step 1] --out panels.png [--csv expert_tokens.csv]

Standard library and matplotlib only (Debian's python3-matplotlib).
"""
import argparse
import csv
import json
import sys
import time
import urllib.parse
import urllib.request


def query_range(base, promql, start, end, step):
    """[(labels, [(t, value)])] of a range query; exits naming the query on an error."""
    params = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    url = f"{base.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
    except OSError as error:
        sys.exit(f"metrics_panels: {url}: {error}")
    if body.get("status") != "success":
        sys.exit(f"metrics_panels: query {promql!r}: {body.get('error', body)}")
    return [(r["metric"], [(float(t), float(v)) for t, v in r["values"]]) for r in body["data"]["result"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="base URL of the Prometheus server")
    parser.add_argument("--job-id", required=True, help="the moex job (its job_id label)")
    parser.add_argument("--minutes", type=float, default=5, help="how far back to draw")
    parser.add_argument("--step", type=float, default=1, help="seconds between points")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--csv", help="also write the heatmap's data here (time, expert, tokens)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - args.minutes * 60
    job = f'job_id="{args.job_id}"'
    q = lambda promql: query_range(args.prometheus, promql, start, end, args.step)  # noqa: E731

    fig, axes = plt.subplots(3, 2, figsize=(13, 11))
    fig.suptitle(f"moex job {args.job_id}: the Grafana dashboard's panels (docs/grafana/moex.json), "
                 f"from Prometheus, {args.step:g} s points")

    def lines(ax, title, unit, series):
        drawn = False
        for label, promql in series:
            for _, values in q(promql):
                ax.plot([t - start for t, _ in values], [v for _, v in values], label=label)
                drawn = True
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.set_xlabel("seconds")
        if drawn:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)

    lines(axes[0][0], "Throughput", "tokens/s", [("tokens/s", f"moex_job_tokens_per_second{{{job}}}")])
    lines(axes[0][1], "Dispatch and combine (median step)", "seconds",
          [("dispatch", f"moex_job_dispatch_seconds{{{job}}}"), ("combine", f"moex_job_combine_seconds{{{job}}}")])
    lines(axes[1][0], "Load balance", "ratio",
          [("imbalance (max/mean)", f"moex_job_imbalance{{{job}}}"),
           ("balancedness (mean/max)", f"moex_job_balancedness{{{job}}}"),
           ("window imbalance", f"moex_job_window_imbalance{{{job}}}")])
    lines(axes[1][1], "Placement", "version",
          [("serving", f"moex_job_placement_version{{{job}}}"),
           ("published", f"moex_job_placement_published_version{{{job}}}")])

    # The heatmap: one row an expert, one column a point in time.
    experts = q(f"moex_expert_tokens{{{job}}}")
    ax = axes[2][0]
    if experts:
        experts.sort(key=lambda r: int(r[0].get("expert", "0")))
        times = sorted({t for _, values in experts for t, _ in values})
        column = {t: i for i, t in enumerate(times)}
        grid = [[float("nan")] * len(times) for _ in experts]
        for row, (_, values) in enumerate(experts):
            for t, v in values:
                grid[row][column[t]] = v
        image = ax.imshow(grid, aspect="auto", origin="lower", interpolation="nearest", cmap="inferno",
                          extent=[times[0] - start, times[-1] - start, -0.5, len(experts) - 0.5])
        fig.colorbar(image, ax=ax, label="tokens over the load window")
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["unix_time", "layer", "expert", "tokens"])
                for labels, values in experts:
                    for t, v in values:
                        writer.writerow([f"{t:.3f}", labels.get("layer", ""), labels.get("expert", ""), f"{v:g}"])
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    ax.set_title("Expert load (moex_expert_tokens)")
    ax.set_ylabel("logical expert")
    ax.set_xlabel("seconds")

    ax = axes[2][1]
    for labels, values in q(f"moex_rank_heartbeat_age_seconds{{{job}}}"):
        ax.plot([t - start for t, _ in values], [v for _, v in values], label=f"rank {labels.get('rank')}")
    ax.set_title("Heartbeat age by rank")
    ax.set_ylabel("seconds")
    ax.set_xlabel("seconds")
    ax.legend(loc="best", fontsize=8)

    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"metrics_panels: wrote {args.out}" + (f" and {args.csv}" if args.csv else ""))


if __name__ == "__main__":
    main()
