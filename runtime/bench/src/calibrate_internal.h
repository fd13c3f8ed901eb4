// What the two calibrations share (calibrate.cc, calibrate_internode.cc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moex/bench/bench.h"
#include "moex/core/str_cat.h"
#include "moex/model/architecture.h"

namespace moex::bench::calibrate_internal {

// `value` is in `list`, or the list is empty (no filter).
inline bool In(const std::vector<int64_t>& list, int64_t value) {
  return list.empty() || std::find(list.begin(), list.end(), value) != list.end();
}

// The one-MoE-layer model a bench point ran: router softmax top-k, no
// shared expert.
inline model::ModelArch PointArch(const BenchPoint& p) {
  model::ModelArch arch;
  arch.model_type = "mixtral";
  arch.source = StrCat("bench point H ", p.hidden, " E ", p.experts, " top-", p.top_k, " F ", p.expert_width);
  arch.hidden_size = p.hidden;
  model::LayerSpec layer;
  layer.ffn = model::FfnKind::kMoe;
  layer.moe.num_experts = p.experts;
  layer.moe.experts_per_token = p.top_k;
  layer.moe.expert_intermediate_size = p.expert_width;
  arch.layers.push_back(layer);
  return arch;
}

}  // namespace moex::bench::calibrate_internal
