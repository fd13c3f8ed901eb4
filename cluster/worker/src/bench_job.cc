// A bench job's rank: the job's points measured one after the other, each
// reported to the controller by rank 0.
#include "moex/worker/bench_job.h"

#include <iostream>
#include <vector>

#include "absl/strings/str_format.h"
#include "moex/bench/report.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::worker {
namespace {

moex::v1::BenchPointResult ToProto(const bench::BenchResult& r) {
  moex::v1::BenchPointResult p;
  p.set_ranks(static_cast<int32_t>(r.point.ranks));
  p.set_tokens_per_rank(r.point.tokens_per_rank);
  p.set_hidden(r.point.hidden);
  p.set_top_k(r.point.top_k);
  p.set_experts(r.point.experts);
  p.set_expert_width(r.point.expert_width);
  p.set_skew(r.point.skew);
  p.set_transport(r.point.transport);
  p.set_path(r.path);
  p.set_dispatch_us(r.dispatch_us.median);
  p.set_combine_us(r.combine_us.median);
  p.set_ours_us(r.ours_us.median);
  p.set_baseline_us(r.baseline_us.median);
  p.set_ratio(r.ratio_of_medians);  // median ours / median baseline (docs/benchmarks.md)
  p.set_dispatch_gbps(r.dispatch_gbps);
  p.set_layer_us(r.layer_us.median);
  p.set_layer_ratio(r.layer_ratio_of_medians);
  p.set_json(bench::ToJson(r).dump());
  return p;
}

}  // namespace

absl::Status RunBenchJob(WorkerSession& session, transport::Transport& t) {
  const moex::v1::JobSpec& spec = session.spec();
  const moex::v1::BenchSpec& b = spec.bench();
  bench::SweepSpec sweep;
  sweep.scaling = "grid";
  sweep.tokens_per_rank.assign(b.tokens_per_rank().begin(), b.tokens_per_rank().end());
  sweep.hidden.assign(b.hidden().begin(), b.hidden().end());
  sweep.top_k.assign(b.top_k().begin(), b.top_k().end());
  sweep.experts.assign(b.experts().begin(), b.experts().end());
  sweep.expert_width.assign(b.expert_width().begin(), b.expert_width().end());
  sweep.skew.assign(b.skew().begin(), b.skew().end());
  sweep.layer = !b.no_layer();
  MOEX_ASSIGN_OR_RETURN(std::vector<bench::BenchPoint> points, bench::ExpandSweep(sweep, t.world_size(), std::string(t.name())));
  bench::RunOptions options;
  options.warmup = b.warmup();
  options.reps = b.reps();
  options.seed = spec.seed();
  options.rep_timeout_seconds = spec.exchange_timeout_seconds() > 0 ? spec.exchange_timeout_seconds() : 60.0;
  std::vector<moex::v1::BenchPointResult> done;
  return bench::RunPoints(t, points, options, [&](const bench::BenchResult& r, size_t i) -> absl::Status {
    if (session.cancelled()) return absl::CancelledError("the job was cancelled");
    session.SetStep(static_cast<int64_t>(i + 1));
    if (t.rank() != 0) return absl::OkStatus();
    std::cerr << absl::StrFormat("moex worker: bench [%d/%d] %s: %s\n", i + 1, points.size(), bench::DescribePoint(r.point),
                                 bench::SummaryLine(r));
    done.push_back(ToProto(r));
    moex::v1::JobMetrics metrics;
    metrics.set_steps_done(static_cast<int64_t>(i + 1));
    metrics.set_dispatch_seconds(r.dispatch_us.median * 1e-6);
    metrics.set_combine_seconds(r.combine_us.median * 1e-6);
    metrics.set_imbalance(r.rank_imbalance);
    return session.ReportStep(static_cast<int64_t>(i + 1), metrics, {}, i + 1 == points.size(), done);
  });
}

}  // namespace moex::worker
