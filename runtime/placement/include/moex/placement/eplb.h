// DeepSeek's EPLB (deepseek-ai/EPLB, eplb.py), ported faithfully: the
// baseline moex's own placement policy must beat.
//
//   rebalance_experts(weight[layers, logical], num_replicas, num_groups,
//                     num_nodes, num_gpus) -> phy2log, log2phy, logcnt
//
// Hierarchical when the expert groups divide evenly over the nodes (groups
// packed onto nodes, experts replicated within each node, replicas packed
// onto the node's GPUs); otherwise the same with one group and one node
// (global). Redundant replicas go, one at a time, to the expert with the
// largest load per replica; packing puts the heaviest item first into the
// lightest pack that still has room. Ties follow the reference: the lower
// index first.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace moex::placement {

using Matrix = std::vector<std::vector<double>>;      // [layers][experts]
using IndexMatrix = std::vector<std::vector<int64_t>>;

struct EplbPlacement {
  IndexMatrix phy2log;  // [layers][num_replicas]: logical expert of each physical slot, GPU by GPU
  IndexMatrix phyrank;  // [layers][num_replicas]: which replica of its expert the slot is
  IndexMatrix logcnt;   // [layers][logical]: replicas of each expert
  std::vector<IndexMatrix> log2phy;  // [layers][logical][max replicas]: slots, -1 padded
};

// EPLB balances hierarchically when the groups divide over the nodes.
inline bool IsHierarchical(int64_t num_groups, int64_t num_nodes) { return num_groups % num_nodes == 0; }

// What any placement with this budget needs (loads finite and >= 0, slots a
// multiple of GPUs, GPUs of nodes, experts of groups); the error names the
// flag at fault.
absl::Status CheckBudget(const Matrix& weight, int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                         int64_t num_gpus);

absl::StatusOr<EplbPlacement> RebalanceExperts(const Matrix& weight, int64_t num_replicas,
                                               int64_t num_groups, int64_t num_nodes, int64_t num_gpus);

// Load of each GPU: every slot carries its expert's load divided by the
// expert's replica count. [layers][gpus]
Matrix GpuLoads(const Matrix& weight, const EplbPlacement& placement, int64_t num_gpus);
// max / mean of one layer's GPU loads (1 when all are zero).
double Imbalance(const std::vector<double>& gpu_loads);
// mean / max of one layer's GPU loads (1 when all are zero): what SGLang and
// vLLM call balancedness, 1 / Imbalance.
double Balancedness(const std::vector<double>& gpu_loads);

// Over all layers ([layers][gpus] loads), the figures each engine prints.
struct BalanceSummary {
  double max_imbalance = 1;   // moex: the worst layer's max/mean
  double mean_imbalance = 1;  // moex: max/mean averaged over layers
  // SGLang's (expert_distribution.py): each layer's mean/max, averaged over
  // layers. SGLang adds 1e-5 to both loads; moex does not.
  double sglang_balancedness = 1;
  // vLLM's (eplb_state.py): the layers' means summed over the layers' maxes
  // summed (vLLM prints 0 when all loads are 0; moex 1).
  double vllm_balancedness = 1;
};
BalanceSummary SummarizeBalance(const Matrix& gpu_loads);

}  // namespace moex::placement
