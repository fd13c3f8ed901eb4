// Expert load statistics: tokens routed to each logical expert per step
// (already summed over ranks by the transport's all-reduce), kept over a
// sliding window of steps and as an exponential moving average.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "moex/placement/placement.h"

namespace moex::placement {

class LoadTracker {
 public:
  // `window` steps (>= 1); `ema_alpha` in (0, 1]: weight of the newest step.
  LoadTracker(int64_t num_experts, int64_t window, double ema_alpha = 0.2);

  void Add(std::span<const int64_t> tokens_per_expert);
  // Tokens per expert summed over the last window_steps() steps.
  const std::vector<double>& window_load() const { return window_sum_; }
  const std::vector<double>& ema() const { return ema_; }
  int64_t window_steps() const { return static_cast<int64_t>(rows_.size()); }
  int64_t window() const { return window_; }
  int64_t steps() const { return steps_; }
  // Forgets the window (after a placement change the old steps say nothing
  // about the new per-rank load; the per-expert load is kept in the EMA).
  void ClearWindow();

 private:
  int64_t window_;
  double alpha_;
  int64_t steps_ = 0;
  std::deque<std::vector<int64_t>> rows_;
  std::vector<double> window_sum_, ema_;
};

// Load of each rank when `load` (per logical expert) is served by
// `placement`: each slot carries its expert's load over its replica count.
std::vector<double> RankLoads(const Placement& placement, std::span<const double> load);

}  // namespace moex::placement
