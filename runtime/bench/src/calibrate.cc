#include "moex/bench/calibrate.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "calibrate_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/architecture.h"

namespace moex::bench {
namespace {

using calibrate_internal::In;
using calibrate_internal::PointArch;
using calibrate_internal::PointPerfOptions;

double RoutedFlops(const BenchResult& r) {
  const BenchPoint& p = r.point;
  // The hottest rank's (token, expert) pairs, as the model counts them.
  return static_cast<double>(p.tokens_per_rank * p.top_k) * std::max(1.0, r.rank_imbalance) * 6.0 *
         static_cast<double>(p.hidden) * static_cast<double>(p.expert_width);
}

double MeanError(const std::vector<std::pair<double, double>>& pairs) {
  if (pairs.empty()) return -1;
  double sum = 0;
  for (auto [measured, model] : pairs) sum += std::fabs(model - measured) / measured;
  return sum / static_cast<double>(pairs.size());
}

}  // namespace

absl::StatusOr<Calibration> Calibrate(const std::vector<BenchResult>& results, const CalibrationOptions& o) {
  std::vector<const BenchResult*> fit, rest;
  for (const BenchResult& r : results) {
    if (!In(o.only_ranks, r.point.ranks)) continue;
    (In(o.fit_ranks, r.point.ranks) && In(o.fit_tokens, r.point.tokens_per_rank) ? fit : rest).push_back(&r);
  }
  // Link: y = a + b x over dispatch and combine of multi-rank points.
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  auto add = [&](double x, double y) { n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y; };
  double flops_sq = 0, flops_time = 0;
  int64_t max_ranks = 1, layer_points = 0;
  for (const BenchResult* r : fit) {
    max_ranks = std::max(max_ranks, r->point.ranks);
    if (r->point.ranks > 1) {
      const double scale = std::max(1.0, r->rank_imbalance);
      add(r->dispatch_bytes_per_rank * scale, r->dispatch_us.median);
      add(r->combine_bytes_per_rank * scale, r->combine_us.median);
    }
    if (r->point.layer && r->expert_us > 0) {
      const double f = RoutedFlops(*r);
      flops_sq += f * f, flops_time += f * r->expert_us;
      ++layer_points;
    }
  }
  for (const BenchResult* r : rest) max_ranks = std::max(max_ranks, r->point.ranks);
  if (n < 4) {
    return absl::FailedPreconditionError(StrCat("calibration needs at least 2 fit points with more than one rank; ",
                                                "it has ", n / 2, " (check --fit-ranks / --fit-tokens)"));
  }
  if (layer_points == 0) {
    return absl::FailedPreconditionError("calibration needs fit points with the whole layer measured (run the bench with the layer on)");
  }
  const double denom = n * sxx - sx * sx;
  if (!(denom > 0)) return absl::FailedPreconditionError("calibration: the fit points all move the same bytes; sweep more sizes");
  double slope = (n * sxy - sx * sy) / denom;  // us per byte
  double intercept = (sy - slope * sx) / n;
  if (!(slope > 0)) return absl::FailedPreconditionError("calibration: time does not grow with bytes over the fit points");
  if (intercept < 0) {  // through the origin instead
    intercept = 0;
    slope = sxy / sxx;
  }
  const double us_per_flop = flops_time / flops_sq;  // the slope of time over FLOPs
  Calibration c;
  c.fit_points = static_cast<int64_t>(fit.size());
  plan::ClusterProfile& p = c.profile;
  p.name = o.name;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  p.gpus_per_node = max_ranks;
  p.nvlink_gbps = 1e-3 / slope;
  p.nvlink_latency_us = intercept;
  p.nic_gbps = p.nvlink_gbps;
  p.nic_latency_us = intercept;
  p.fp32_tflops = 1e6 / us_per_flop / 1e12;  // FLOP per us -> TFLOP/s
  p.bf16_tflops = p.fp32_tflops;
  p.fp8_tflops = p.fp32_tflops;
  p.hbm_tbps = o.copy_gbps > 0 ? o.copy_gbps / 1e3 : 1.0;
  p.gpu_mem_gib = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) / (1 << 30) : 16;
  p.gemm_efficiency = 1;
  p.link_efficiency = 1;
  p.source = StrCat("moex bench calibrate over ", c.fit_points, " points of one host: link figures fitted from dispatch ",
                    "and combine (network = the same, not measured), compute from the layer's experts in fp32 (bf16 ",
                    "and fp8 set to it), memory from a copy", o.copy_gbps > 0 ? "" : " (not measured: 1 TB/s)");

  std::vector<std::pair<double, double>> dispatch, combine, expert, layer;
  for (const BenchResult* r : rest) {
    const plan::PerfOptions po = PointPerfOptions(r->point, p, "fp32");
    MOEX_ASSIGN_OR_RETURN(plan::PerfReport report, plan::ModelPerf(PointArch(r->point), po));
    if (report.ep.empty()) continue;
    const plan::EpPerf& e = report.ep.front();
    Prediction pr;
    pr.point = r->point;
    pr.dispatch_us = r->dispatch_us.median, pr.combine_us = r->combine_us.median;
    pr.dispatch_model_us = e.dispatch_us, pr.combine_model_us = e.combine_us;
    pr.expert_model_us = e.expert_us, pr.layer_model_us = e.layer_us;
    if (r->point.ranks > 1) {
      dispatch.push_back({pr.dispatch_us, pr.dispatch_model_us});
      combine.push_back({pr.combine_us, pr.combine_model_us});
    }
    if (r->point.layer) {
      pr.expert_us = r->expert_us, pr.layer_us = r->layer_us.median;
      if (pr.expert_us > 0) expert.push_back({pr.expert_us, pr.expert_model_us});
      if (pr.layer_us > 0) layer.push_back({pr.layer_us, pr.layer_model_us});
    }
    c.held_out.push_back(pr);
  }
  c.dispatch_error = MeanError(dispatch);
  c.combine_error = MeanError(combine);
  c.expert_error = MeanError(expert);
  c.layer_error = MeanError(layer);
  return c;
}

nlohmann::json ProfileJson(const plan::ClusterProfile& p) {
  return {{"name", p.name},
          {"source", p.source},
          {"gpus_per_node", p.gpus_per_node},
          {"nvlink_gbps", p.nvlink_gbps},
          {"nvlink_latency_us", p.nvlink_latency_us},
          {"nic_gbps", p.nic_gbps},
          {"nic_latency_us", p.nic_latency_us},
          {"bf16_tflops", p.bf16_tflops},
          {"fp8_tflops", p.fp8_tflops},
          {"fp32_tflops", p.fp32_tflops},
          {"hbm_tbps", p.hbm_tbps},
          {"gpu_mem_gib", p.gpu_mem_gib},
          {"gemm_efficiency", p.gemm_efficiency},
          {"link_efficiency", p.link_efficiency}};
}

nlohmann::json CalibrationJson(const Calibration& c) {
  nlohmann::json held = nlohmann::json::array();
  for (const Prediction& p : c.held_out) {
    held.push_back({{"ranks", p.point.ranks}, {"tokens_per_rank", p.point.tokens_per_rank}, {"hidden", p.point.hidden},
                    {"top_k", p.point.top_k}, {"experts", p.point.experts}, {"expert_width", p.point.expert_width},
                    {"skew", p.point.skew}, {"dispatch_us", p.dispatch_us}, {"dispatch_model_us", p.dispatch_model_us},
                    {"combine_us", p.combine_us}, {"combine_model_us", p.combine_model_us},
                    {"expert_us", p.expert_us}, {"expert_model_us", p.expert_model_us}, {"layer_us", p.layer_us},
                    {"layer_model_us", p.layer_model_us}});
  }
  return {{"profile", ProfileJson(c.profile)}, {"fit_points", c.fit_points}, {"held_out", held},
          {"mean_abs_error", {{"dispatch", c.dispatch_error}, {"combine", c.combine_error},
                              {"expert", c.expert_error}, {"layer", c.layer_error}}}};
}

double MeasureCopyGbps() {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    auto start = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    a[static_cast<size_t>(i)] = b[bytes - 1 - static_cast<size_t>(i)];  // keeps the copies observable
    // A copy reads and writes every byte.
    best = std::max(best, 2.0 * static_cast<double>(bytes) / s / 1e9);
  }
  return best;
}

}  // namespace moex::bench
