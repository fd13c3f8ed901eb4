#include "moex/placement/eplb.h"

#include <algorithm>
#include <numeric>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::placement {
namespace {

// Items of each row, heaviest first; equal weights keep their order.
std::vector<int64_t> HeaviestFirst(const std::vector<double>& row) {
  std::vector<int64_t> order(row.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  return order;
}

// Packs each row's n items into `packs` packs of n / packs items each, as
// evenly as possible: heaviest first into the lightest pack with room.
void BalancedPacking(const Matrix& weight, int64_t packs, IndexMatrix* pack_index, IndexMatrix* rank_in_pack) {
  const size_t rows = weight.size();
  pack_index->assign(rows, {});
  rank_in_pack->assign(rows, {});
  for (size_t i = 0; i < rows; ++i) {
    const int64_t n = static_cast<int64_t>(weight[i].size()), per_pack = n / packs;
    (*pack_index)[i].assign(n, -1);
    (*rank_in_pack)[i].assign(n, -1);
    if (per_pack == 1) {
      for (int64_t g = 0; g < n; ++g) {
        (*pack_index)[i][g] = g;
        (*rank_in_pack)[i][g] = 0;
      }
      continue;
    }
    std::vector<double> load(packs, 0.0);
    std::vector<int64_t> count(packs, 0);
    for (int64_t item : HeaviestFirst(weight[i])) {
      int64_t best = -1;
      for (int64_t p = 0; p < packs; ++p) {
        if (count[p] < per_pack && (best < 0 || load[p] < load[best])) best = p;
      }
      (*pack_index)[i][item] = best;
      (*rank_in_pack)[i][item] = count[best]++;
      load[best] += weight[i][item];
    }
  }
}

// One replica each, then the redundant ones, one at a time, to the expert
// with the largest load per replica.
void ReplicateExperts(const Matrix& weight, int64_t num_physical, IndexMatrix* phy2log, IndexMatrix* rank,
                      IndexMatrix* logcnt) {
  const size_t rows = weight.size();
  phy2log->assign(rows, {});
  rank->assign(rows, {});
  logcnt->assign(rows, {});
  for (size_t i = 0; i < rows; ++i) {
    const int64_t num_logical = static_cast<int64_t>(weight[i].size());
    auto& p2l = (*phy2log)[i];
    auto& r = (*rank)[i];
    auto& cnt = (*logcnt)[i];
    p2l.resize(num_physical);
    std::iota(p2l.begin(), p2l.end(), 0);
    r.assign(num_physical, 0);
    cnt.assign(num_logical, 1);
    for (int64_t slot = num_logical; slot < num_physical; ++slot) {
      int64_t best = 0;
      for (int64_t e = 1; e < num_logical; ++e) {
        if (weight[i][e] / cnt[e] > weight[i][best] / cnt[best]) best = e;
      }
      p2l[slot] = best;
      r[slot] = cnt[best]++;
    }
  }
}

std::vector<int64_t> Inverse(const std::vector<int64_t>& permutation) {
  std::vector<int64_t> inverse(permutation.size());
  for (size_t i = 0; i < permutation.size(); ++i) inverse[permutation[i]] = static_cast<int64_t>(i);
  return inverse;
}

EplbPlacement Hierarchical(const Matrix& weight, int64_t num_physical, int64_t num_groups, int64_t num_nodes,
                           int64_t num_gpus) {
  const int64_t layers = static_cast<int64_t>(weight.size());
  const int64_t num_logical = static_cast<int64_t>(weight[0].size());
  const int64_t group_size = num_logical / num_groups, groups_per_node = num_groups / num_nodes;
  const int64_t phy_per_gpu = num_physical / num_gpus, log_per_node = num_logical / num_nodes;
  const int64_t phy_per_node = num_physical / num_nodes;

  // 1. Expert groups onto nodes. "mlog" numbers experts node by node.
  Matrix group_load(layers, std::vector<double>(num_groups, 0.0));
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t e = 0; e < num_logical; ++e) group_load[l][e / group_size] += weight[l][e];
  }
  IndexMatrix group_pack, group_rank;
  BalancedPacking(group_load, num_nodes, &group_pack, &group_rank);
  IndexMatrix log2mlog(layers, std::vector<int64_t>(num_logical)), mlog2log(layers);
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t e = 0; e < num_logical; ++e) {
      int64_t g = e / group_size;
      log2mlog[l][e] = (group_pack[l][g] * groups_per_node + group_rank[l][g]) * group_size + e % group_size;
    }
    mlog2log[l] = Inverse(log2mlog[l]);
  }

  // 2. Replicas within each node: one row per (layer, node).
  Matrix node_load(layers * num_nodes, std::vector<double>(log_per_node));
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t m = 0; m < num_logical; ++m) node_load[l * num_nodes + m / log_per_node][m % log_per_node] = weight[l][mlog2log[l][m]];
  }
  IndexMatrix phy2mlog, phyrank, mlogcnt;
  ReplicateExperts(node_load, phy_per_node, &phy2mlog, &phyrank, &mlogcnt);

  // 3. Replicas onto the node's GPUs.
  Matrix replica_load(layers * num_nodes, std::vector<double>(phy_per_node));
  for (size_t row = 0; row < replica_load.size(); ++row) {
    for (int64_t p = 0; p < phy_per_node; ++p) {
      int64_t m = phy2mlog[row][p];
      replica_load[row][p] = node_load[row][m] / static_cast<double>(mlogcnt[row][m]);
    }
  }
  IndexMatrix pack, rank;
  BalancedPacking(replica_load, num_gpus / num_nodes, &pack, &rank);

  EplbPlacement out;
  out.phy2log.assign(layers, std::vector<int64_t>(num_physical));
  out.phyrank.assign(layers, std::vector<int64_t>(num_physical));
  out.logcnt.assign(layers, std::vector<int64_t>(num_logical));
  for (int64_t l = 0; l < layers; ++l) {
    for (int64_t node = 0; node < num_nodes; ++node) {
      const int64_t row = l * num_nodes + node;
      std::vector<int64_t> phy2pphy(phy_per_node);
      for (int64_t p = 0; p < phy_per_node; ++p) phy2pphy[p] = pack[row][p] * phy_per_gpu + rank[row][p];
      std::vector<int64_t> pphy2phy = Inverse(phy2pphy);
      for (int64_t q = 0; q < phy_per_node; ++q) {
        int64_t mlog = phy2mlog[row][pphy2phy[q]] + node * log_per_node;
        out.phy2log[l][node * phy_per_node + q] = mlog2log[l][mlog];
        out.phyrank[l][node * phy_per_node + q] = phyrank[row][pphy2phy[q]];
      }
    }
    for (int64_t e = 0; e < num_logical; ++e) {
      int64_t m = log2mlog[l][e];
      out.logcnt[l][e] = mlogcnt[l * num_nodes + m / log_per_node][m % log_per_node];
    }
  }
  return out;
}

}  // namespace


absl::Status CheckBudget(const Matrix& weight, int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                         int64_t num_gpus) {
  if (weight.empty() || weight[0].empty()) return absl::InvalidArgumentError("the load has no layer or no expert");
  const int64_t num_logical = static_cast<int64_t>(weight[0].size());
  for (size_t l = 0; l < weight.size(); ++l) {
    if (static_cast<int64_t>(weight[l].size()) != num_logical) {
      return absl::InvalidArgumentError(StrCat("load row ", l, " has ", weight[l].size(), " experts, row 0 has ", num_logical));
    }
    for (double w : weight[l]) {
      if (!(w >= 0) || w > 1e18) return absl::InvalidArgumentError(StrCat("load row ", l, " has a negative or non-finite entry"));
    }
  }
  if (num_gpus < 1 || num_nodes < 1 || num_groups < 1) return absl::InvalidArgumentError("--gpus, --nodes and --groups must be positive");
  if (num_replicas < num_logical) {
    return absl::InvalidArgumentError(StrCat("--replicas ", num_replicas, " is below the ", num_logical, " logical experts"));
  }
  if (num_replicas % num_gpus != 0) {
    return absl::InvalidArgumentError(StrCat("--replicas ", num_replicas, " must be a multiple of --gpus ", num_gpus));
  }
  if (num_gpus % num_nodes != 0) return absl::InvalidArgumentError(StrCat("--gpus ", num_gpus, " must be a multiple of --nodes ", num_nodes));
  if (num_logical % num_groups != 0) {
    return absl::InvalidArgumentError(StrCat("--groups ", num_groups, " must divide the ", num_logical, " experts"));
  }
  const int64_t nodes = IsHierarchical(num_groups, num_nodes) ? num_nodes : 1;
  if (num_logical % nodes != 0 || num_replicas % nodes != 0) {
    return absl::InvalidArgumentError(StrCat("the experts (", num_logical, ") and replicas (", num_replicas,
                                             ") must divide over the ", nodes, " nodes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<EplbPlacement> RebalanceExperts(const Matrix& weight, int64_t num_replicas, int64_t num_groups,
                                               int64_t num_nodes, int64_t num_gpus) {
  MOEX_RETURN_IF_ERROR(CheckBudget(weight, num_replicas, num_groups, num_nodes, num_gpus));
  const int64_t num_logical = static_cast<int64_t>(weight[0].size());
  // Global policy when groups do not divide over the nodes, as the reference.
  const bool hierarchical = IsHierarchical(num_groups, num_nodes);
  const int64_t groups = hierarchical ? num_groups : 1, nodes = hierarchical ? num_nodes : 1;
  EplbPlacement out = Hierarchical(weight, num_replicas, groups, nodes, num_gpus);
  const int64_t max_count = num_replicas - num_logical + 1;
  out.log2phy.assign(weight.size(), IndexMatrix(num_logical, std::vector<int64_t>(max_count, -1)));
  for (size_t l = 0; l < weight.size(); ++l) {
    for (int64_t s = 0; s < num_replicas; ++s) out.log2phy[l][out.phy2log[l][s]][out.phyrank[l][s]] = s;
  }
  return out;
}

Matrix GpuLoads(const Matrix& weight, const EplbPlacement& placement, int64_t num_gpus) {
  Matrix loads(weight.size(), std::vector<double>(num_gpus, 0.0));
  for (size_t l = 0; l < weight.size(); ++l) {
    const int64_t slots = static_cast<int64_t>(placement.phy2log[l].size()), per_gpu = slots / num_gpus;
    for (int64_t s = 0; s < slots; ++s) {
      int64_t e = placement.phy2log[l][s];
      loads[l][s / per_gpu] += weight[l][e] / static_cast<double>(placement.logcnt[l][e]);
    }
  }
  return loads;
}

double Imbalance(const std::vector<double>& gpu_loads) {
  double total = 0, most = 0;
  for (double load : gpu_loads) {
    total += load;
    most = std::max(most, load);
  }
  return total > 0 ? most * static_cast<double>(gpu_loads.size()) / total : 1.0;
}

double Balancedness(const std::vector<double>& gpu_loads) {
  double total = 0, most = 0;
  for (double load : gpu_loads) {
    total += load;
    most = std::max(most, load);
  }
  return most > 0 && !gpu_loads.empty() ? total / static_cast<double>(gpu_loads.size()) / most : 1.0;
}

BalanceSummary SummarizeBalance(const Matrix& gpu_loads) {
  BalanceSummary out;
  if (gpu_loads.empty()) return out;
  double imbalance_sum = 0, balancedness_sum = 0, mean_sum = 0, max_sum = 0;
  out.max_imbalance = 0;
  for (const std::vector<double>& layer : gpu_loads) {
    const double imbalance = Imbalance(layer);
    out.max_imbalance = std::max(out.max_imbalance, imbalance);
    imbalance_sum += imbalance;
    balancedness_sum += Balancedness(layer);
    double total = 0, most = 0;
    for (double load : layer) {
      total += load;
      most = std::max(most, load);
    }
    if (!layer.empty()) mean_sum += total / static_cast<double>(layer.size());
    max_sum += most;
  }
  const double layers = static_cast<double>(gpu_loads.size());
  out.mean_imbalance = imbalance_sum / layers;
  out.sglang_balancedness = balancedness_sum / layers;
  out.vllm_balancedness = max_sum > 0 ? mean_sum / max_sum : 1.0;
  return out;
}

}  // namespace moex::placement
