#include "moex/run/step_summary.h"

#include <algorithm>

#include "moex/core/status_macros.h"

namespace moex::run {
namespace {

// Per-rank figures of one step, gathered to every rank.
enum Field {
  kTokens, kReceived, kPairs, kRoute, kDispatch, kExperts, kCombine, kDispatchBytes, kCombineBytes,
  kRemoteCopies, kStepSeconds, kInternode, kInternodeFloor, kCombineInternode, kNumFields
};

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

}  // namespace

absl::StatusOr<StepSummary> Summarise(transport::Transport& t, const ep::Layer& layer, const ep::StepStats& s,
                                      double seconds, int64_t step, Deadline deadline) {
  const int world = t.world_size();
  std::vector<double> mine(kNumFields), all(kNumFields * world);
  mine[kTokens] = static_cast<double>(s.tokens);
  mine[kReceived] = static_cast<double>(s.received_tokens);
  mine[kPairs] = static_cast<double>(s.routed_pairs);
  mine[kRoute] = s.route_seconds;
  mine[kDispatch] = s.dispatch_seconds;
  mine[kExperts] = s.expert_seconds;
  mine[kCombine] = s.combine_seconds;
  mine[kDispatchBytes] = static_cast<double>(s.dispatch_bytes);
  mine[kCombineBytes] = static_cast<double>(s.combine_bytes);
  mine[kRemoteCopies] = static_cast<double>(s.remote_token_copies);
  mine[kStepSeconds] = seconds;
  mine[kInternode] = static_cast<double>(s.internode_bytes);
  mine[kInternodeFloor] = static_cast<double>(s.internode_floor_bytes);
  mine[kCombineInternode] = static_cast<double>(s.combine_internode_bytes);
  MOEX_RETURN_IF_ERROR(t.AllGather(mine, all, deadline));
  std::vector<int64_t> per_expert = layer.TokensPerExpert(s);
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(per_expert), deadline));
  StepSummary out;
  out.step = step;
  out.tokens_per_expert = std::move(per_expert);
  out.placement_version = layer.placement().version();
  int64_t load_total = 0, load_max = 0;
  for (int r = 0; r < world; ++r) {
    const double* f = &all[r * kNumFields];
    out.tokens += static_cast<int64_t>(f[kTokens]);
    out.seconds = std::max(out.seconds, f[kStepSeconds]);
    out.route = std::max(out.route, f[kRoute]);
    out.dispatch = std::max(out.dispatch, f[kDispatch]);
    out.experts = std::max(out.experts, f[kExperts]);
    out.combine = std::max(out.combine, f[kCombine]);
    out.bytes += static_cast<int64_t>(f[kDispatchBytes] + f[kCombineBytes]);
    out.dispatch_bytes += static_cast<int64_t>(f[kDispatchBytes]);
    out.remote_copies += static_cast<int64_t>(f[kRemoteCopies]);
    out.internode_bytes += static_cast<int64_t>(f[kInternode]);
    out.internode_floor_bytes += static_cast<int64_t>(f[kInternodeFloor]);
    out.combine_internode_bytes += static_cast<int64_t>(f[kCombineInternode]);
    out.load.push_back(static_cast<int64_t>(f[kPairs]));
    load_total += out.load.back();
    load_max = std::max(load_max, out.load.back());
  }
  out.imbalance = load_total > 0 ? static_cast<double>(load_max) * world / static_cast<double>(load_total) : 1.0;
  return out;
}

Medians MeasuredMedians(const std::vector<StepSummary>& steps) {
  std::vector<double> rate, dispatch, combine, imbalance, internode, floor, combine_internode;
  for (size_t i = steps.size() > 1 ? 1 : 0; i < steps.size(); ++i) {
    const StepSummary& s = steps[i];
    rate.push_back(s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0);
    dispatch.push_back(s.dispatch);
    combine.push_back(s.combine);
    imbalance.push_back(s.imbalance);
    internode.push_back(static_cast<double>(s.internode_bytes));
    floor.push_back(static_cast<double>(s.internode_floor_bytes));
    combine_internode.push_back(static_cast<double>(s.combine_internode_bytes));
  }
  return {.rate = Median(rate), .dispatch = Median(dispatch), .combine = Median(combine),
          .imbalance = Median(imbalance), .internode_bytes = Median(internode), .internode_floor_bytes = Median(floor),
          .combine_internode_bytes = Median(combine_internode), .steps = rate.size()};
}

nlohmann::json ToJson(const StepSummary& s) {
  return {{"tokens", s.tokens}, {"seconds", s.seconds}, {"route_seconds", s.route},
          {"dispatch_seconds", s.dispatch}, {"expert_seconds", s.experts},
          {"combine_seconds", s.combine}, {"bytes_sent", s.bytes},
          {"internode_bytes", s.internode_bytes}, {"internode_floor_bytes", s.internode_floor_bytes},
          {"combine_internode_bytes", s.combine_internode_bytes},
          {"tokens_per_second", s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0},
          {"load_per_rank", s.load}, {"imbalance", s.imbalance},
          {"tokens_per_expert", s.tokens_per_expert}, {"placement_version", s.placement_version},
          {"check_relative_error", s.check_error}};
}

}  // namespace moex::run
