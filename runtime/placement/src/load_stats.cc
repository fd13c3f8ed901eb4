#include "moex/placement/load_stats.h"

#include <algorithm>

namespace moex::placement {

LoadTracker::LoadTracker(int64_t num_experts, int64_t window, double ema_alpha)
    : window_(std::max<int64_t>(1, window)), alpha_(std::clamp(ema_alpha, 1e-6, 1.0)),
      window_sum_(num_experts, 0.0), ema_(num_experts, 0.0) {}

void LoadTracker::Add(std::span<const int64_t> tokens) {
  const size_t n = std::min(tokens.size(), ema_.size());
  rows_.emplace_back(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(n));
  for (size_t e = 0; e < n; ++e) {
    window_sum_[e] += static_cast<double>(tokens[e]);
    ema_[e] = steps_ == 0 ? static_cast<double>(tokens[e]) : alpha_ * static_cast<double>(tokens[e]) + (1 - alpha_) * ema_[e];
  }
  if (static_cast<int64_t>(rows_.size()) > window_) {
    for (size_t e = 0; e < rows_.front().size(); ++e) window_sum_[e] -= static_cast<double>(rows_.front()[e]);
    rows_.pop_front();
  }
  ++steps_;
}

void LoadTracker::ClearWindow() {
  rows_.clear();
  std::fill(window_sum_.begin(), window_sum_.end(), 0.0);
}

std::vector<double> RankLoads(const Placement& placement, std::span<const double> load) {
  std::vector<double> out(placement.world_size(), 0.0);
  for (int64_t s = 0; s < placement.num_slots(); ++s) {
    const int64_t e = placement.slot_expert(s);
    out[placement.slot_rank(s)] += load[e] / static_cast<double>(placement.expert_slots(e).size());
  }
  return out;
}

}  // namespace moex::placement
