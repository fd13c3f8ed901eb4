// `moex plan`: what a model costs. Parameters (total vs active), FLOPs per
// token, weight memory at a dtype, and, given a GPU count, how the experts
// partition across GPUs and whether the weights fit.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"
#include "moex/model/param_count.h"
#include "moex/plan/weight_dtype.h"

namespace moex::plan {

struct PlanOptions {
  WeightDtype dtype = WeightDtype::kBf16;
  // Tokens of context the token attends to (its position in the sequence).
  int64_t context = 4096;
  // Set: plan a deployment on this many GPUs (expert parallel).
  std::optional<int64_t> gpus = std::nullopt;
  int64_t gpus_per_node = 8;
  double gpu_mem_gib = 80.0;
  // Where `dtype` came from (DtypeChoice::source) and what was read there.
  std::string dtype_source = "default";
  std::string dtype_detail{};

  // Names the flag that is out of range.
  absl::Status Validate() const;
};

// Experts partitioned across GPUs, everything else replicated on each (the
// layout of expert parallelism with data-parallel attention).
struct Deployment {
  int64_t gpus = 0;
  int64_t gpus_per_node = 0;
  int64_t nodes = 0;
  double gpu_mem_bytes = 0;
  int64_t max_experts_per_gpu = 0;  // per MoE layer, on the fullest GPU
  int64_t min_experts_per_gpu = 0;
  bool experts_divide_evenly = true;
  double replicated_bytes = 0;       // non-expert weights, on every GPU
  double expert_bytes_per_gpu = 0;   // fullest GPU
  double weight_bytes_per_gpu = 0;
  bool fits = false;
  double headroom_bytes = 0;         // left for KV cache and activations (< 0: short)
  double kv_cache_tokens_per_gpu = 0;
  std::optional<int64_t> fewest_gpus;             // smallest count that holds the weights
  std::optional<int64_t> fewest_gpus_whole_nodes; // rounded up to whole nodes
  std::string why_no_fit;  // when no GPU count holds it
};

struct Plan {
  model::ModelArch arch;
  model::ParamCount params;
  PlanOptions options;
  DtypeScheme scheme;

  double activation_ratio = 0;  // active / total
  // Forward FLOPs of one token at `options.context`.
  double flops_per_token = 0;
  double linear_flops_per_token = 0;      // 2 x active matmul weights
  double attention_flops_per_token = 0;   // q.k scores and weighted values
  double scan_flops_per_token = 0;        // state-space scans

  std::array<double, model::kNumParts> part_bytes{};
  double weight_bytes = 0;
  double mtp_weight_bytes = 0;
  double kv_cache_bytes_per_token = 0;  // bf16 cache, all layers

  std::optional<Deployment> deployment;
  std::vector<std::string> notes;
};

absl::StatusOr<Plan> MakePlan(const model::ModelArch& arch, const PlanOptions& options);

}  // namespace moex::plan
