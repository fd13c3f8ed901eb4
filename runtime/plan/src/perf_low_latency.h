// Internal to moex::plan: the low-latency mode of `moex plan --perf`
// (perf_low_latency.cc), called by ModelPerf for each EP size.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moex/plan/perf_model.h"

namespace moex::plan::internal {

struct LowLatencyInputs {
  const std::vector<double>* popularity = nullptr;  // per logical expert
  int64_t top_k = 0, groups = 1, topk_groups = 1;
  int64_t ep = 0, gpus_per_node = 8;
  int64_t tokens_per_rank = 0, hidden = 0;
  std::string dispatch_dtype, combine_dtype, intranode;
  const ClusterProfile* cluster = nullptr;
  uint64_t seed = 1;
};

// Checks the options low-latency mode adds or narrows; the flags named.
absl::Status CheckLowLatencyOptions(const PerfOptions& options);

// Fills `p`'s dispatch and combine fields (times, bytes on both conventions,
// the ll_* fields) and its rank_imbalance (the batch's hottest receiver of
// routed pairs), from routing whole batches of ep x tokens_per_rank tokens.
void ModelLowLatency(const LowLatencyInputs& in, EpPerf* p);

}  // namespace moex::plan::internal
