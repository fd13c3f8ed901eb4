// One step's figures over all ranks, and the medians a run reports.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/ep/layer.h"
#include "moex/transport/transport.h"
#include "nlohmann/json.hpp"

namespace moex::run {

struct StepSummary {
  int64_t step = 0;  // 0-based
  int64_t tokens = 0;
  double seconds = 0;                                         // slowest rank
  double route = 0, dispatch = 0, experts = 0, combine = 0;  // slowest rank each
  int64_t bytes = 0;                                          // dispatch + combine, every rank's, each byte once
  int64_t dispatch_bytes = 0;
  int64_t remote_copies = 0;  // the floor of dispatch, in token rows
  // Every rank's dispatch bytes that crossed between hosts, their floor
  // (distinct (token, remote host) pairs x hidden x 4), combine's crossing.
  int64_t internode_bytes = 0, internode_floor_bytes = 0, combine_internode_bytes = 0;
  std::vector<int64_t> load;  // routed pairs per rank
  double imbalance = 0;       // max / mean load
  std::vector<int64_t> tokens_per_expert;
  int64_t placement_version = 1;
  std::string migration;      // what the rebalancer does after this step, if anything
  double check_error = -1;    // --check-every-step: relative error of this step
};

// Collective: gathers every rank's `stats` and the step's wall time; the
// per-expert load summed over ranks.
absl::StatusOr<StepSummary> Summarise(transport::Transport& t, const ep::Layer& layer, const ep::StepStats& stats,
                                      double seconds, int64_t step, Deadline deadline);

struct Medians {
  double rate = 0, dispatch = 0, combine = 0, imbalance = 0;  // tokens/s, seconds, seconds, max/mean
  double internode_bytes = 0, internode_floor_bytes = 0, combine_internode_bytes = 0;  // per step
  size_t steps = 0;
};
// Medians over the steps after the first (a warm-up), unless only one ran.
Medians MeasuredMedians(const std::vector<StepSummary>& steps);

nlohmann::json ToJson(const StepSummary& s);

}  // namespace moex::run
