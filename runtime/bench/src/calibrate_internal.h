// What the two calibrations share (calibrate.cc, calibrate_internode.cc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "moex/bench/bench.h"
#include "moex/core/str_cat.h"
#include "moex/model/architecture.h"
#include "moex/plan/perf_model.h"

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

// The plan model's options for predicting a bench point: its ranks and
// tokens, fp32 on the wire (as the bench moves), `expert_dtype` for the
// experts.
inline plan::PerfOptions PointPerfOptions(const BenchPoint& p, const plan::ClusterProfile& profile,
                                          const std::string& expert_dtype) {
  plan::PerfOptions po;
  po.cluster = profile;
  po.ep_sizes = {p.ranks};
  po.tokens_per_rank = p.tokens_per_rank;
  po.dispatch_dtype = "fp32";
  po.combine_dtype = "fp32";
  po.expert_dtype = expert_dtype;
  po.routing_skew = p.skew;
  po.samples = 4096;
  return po;
}

}  // namespace moex::bench::calibrate_internal
