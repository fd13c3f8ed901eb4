// CalibrateInternode: the performance model's network term, fitted on
// `moex bench` points whose ranks spanned hosts and checked on others.
#include <algorithm>
#include <cmath>

#include "calibrate_internal.h"
#include "moex/bench/calibrate.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/architecture.h"

namespace moex::bench {
using calibrate_internal::In;
using calibrate_internal::PointArch;
using calibrate_internal::PointPerfOptions;

absl::StatusOr<InternodeCalibration> CalibrateInternode(const std::vector<BenchResult>& results,
                                                        const CalibrationOptions& o,
                                                        const plan::ClusterProfile& base) {
  std::vector<const BenchResult*> fit, rest;
  int64_t per_host = 0;
  for (const BenchResult& r : results) {
    if (!r.has_hierarchical || r.hosts < 2 || !In(o.only_ranks, r.point.ranks)) continue;
    if (r.point.ranks % r.hosts != 0) {
      return absl::InvalidArgumentError(StrCat("calibrate: a point has ", r.point.ranks, " ranks on ", r.hosts,
                                               " hosts: the model needs the same ranks on every host"));
    }
    if (per_host != 0 && per_host != r.point.ranks / r.hosts) {
      return absl::InvalidArgumentError("calibrate: the points have different ranks per host; calibrate one layout "
                                        "at a time (--ranks)");
    }
    per_host = r.point.ranks / r.hosts;
    (In(o.fit_ranks, r.point.ranks) && In(o.fit_tokens, r.point.tokens_per_rank) ? fit : rest).push_back(&r);
  }
  if (fit.size() < 2) {
    return absl::FailedPreconditionError(StrCat("calibrate --internode needs at least 2 fit points whose ranks span "
                                                "hosts (bench/cluster_bench.sh makes them); it has ", fit.size()));
  }
  // y = a + b x: x the bytes between hosts (dispatch + combine) scaled by
  // the hottest rank's share, y the hierarchical time; a is two latencies.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const BenchResult* r : fit) {
    const double x = r->hier_internode_bytes_per_rank * std::max(1.0, r->rank_imbalance), y = r->hier_us.median;
    n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
  }
  const double denom = n * sxx - sx * sx;
  if (!(denom > 0)) return absl::FailedPreconditionError("calibrate: the fit points all move the same bytes");
  double slope = (n * sxy - sx * sy) / denom, intercept = (sy - slope * sx) / n;
  if (!(slope > 0)) return absl::FailedPreconditionError("calibrate: time does not grow with the bytes between hosts");
  if (intercept < 0) intercept = 0, slope = sxy / sxx;
  InternodeCalibration c;
  c.fit_points = static_cast<int64_t>(fit.size());
  plan::ClusterProfile& p = c.profile;
  p = base;
  p.name = o.name;
  p.gpus_per_node = per_host;
  p.nic_gbps = 1e-3 / slope;  // bytes per us -> GB/s
  p.nic_latency_us = intercept / 2;
  p.link_efficiency = 1;
  p.source = StrCat(base.source, "; network: moex bench calibrate --internode over ", c.fit_points,
                    " points across hosts (", per_host, " ranks a host), hierarchical dispatch + combine");

  std::vector<double> errors;
  for (const BenchResult* r : rest) {
    // Experts in bf16: not what is checked (dispatch + combine are); any rate the profile has.
    const plan::PerfOptions po = PointPerfOptions(r->point, p, "bf16");
    MOEX_ASSIGN_OR_RETURN(plan::PerfReport report, plan::ModelPerf(PointArch(r->point), po));
    if (report.ep.empty()) continue;
    const plan::EpPerf& e = report.ep.front();
    InternodeCalibration::Point pt{.point = r->point, .hosts = r->hosts, .measured_us = r->hier_us.median,
                                   .model_us = e.dispatch_us + e.combine_us,
                                   .internode_bytes = r->hier_internode_bytes_per_rank,
                                   // fp32 both ways: combine's network bytes are dispatch's
                                   .model_internode_bytes = 2 * e.dispatch_network_bytes_per_rank};
    c.held_out.push_back(pt);
    errors.push_back(std::fabs(pt.model_us - pt.measured_us) / pt.measured_us);
  }
  if (!errors.empty()) {
    double sum = 0;
    for (double e : errors) sum += e;
    c.error = sum / static_cast<double>(errors.size());
  }
  return c;
}

nlohmann::json InternodeCalibrationJson(const InternodeCalibration& c) {
  nlohmann::json held = nlohmann::json::array();
  for (const InternodeCalibration::Point& p : c.held_out) {
    held.push_back({{"ranks", p.point.ranks}, {"hosts", p.hosts}, {"tokens_per_rank", p.point.tokens_per_rank},
                    {"hidden", p.point.hidden}, {"top_k", p.point.top_k}, {"experts", p.point.experts},
                    {"hierarchical_us", p.measured_us}, {"model_us", p.model_us},
                    {"internode_bytes_per_rank", p.internode_bytes},
                    {"model_internode_bytes_per_rank", p.model_internode_bytes}});
  }
  return {{"profile", ProfileJson(c.profile)}, {"fit_points", c.fit_points}, {"held_out", held},
          {"mean_abs_error", c.error}};
}

}  // namespace moex::bench
