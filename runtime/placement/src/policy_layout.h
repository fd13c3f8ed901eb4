// moex's placement policy, inside: one layer's placement while it is being
// improved, and the steps PlanPlacement runs on it (policy.cc): the
// local search (policy_search.cc) and the relabelling against the current
// placement (policy_relabel.cc). Private to the placement layer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moex::placement::policy {

// One layer's placement while it is being improved.
struct Layout {
  int64_t gpus = 0, per_gpu = 0, gpus_per_node = 0;
  std::vector<int64_t> slot;         // phy2log, GPU by GPU
  std::vector<double> weight;        // load per logical expert
  std::vector<int64_t> count;        // replicas per logical expert
  std::vector<int64_t> expert_node;  // the node an expert's replicas must stay on, or -1
  std::vector<double> gpu_load;

  Layout(std::vector<int64_t> phy2log, const std::vector<double>& w, int64_t num_gpus, int64_t num_nodes)
      : gpus(num_gpus), per_gpu(static_cast<int64_t>(phy2log.size()) / num_gpus),
        gpus_per_node(num_gpus / num_nodes), slot(std::move(phy2log)), weight(w),
        count(w.size(), 0), expert_node(w.size(), -1) {
    for (int64_t e : slot) ++count[e];
    Recompute();
  }
  int64_t Gpu(int64_t s) const { return s / per_gpu; }
  int64_t Node(int64_t gpu) const { return gpu / gpus_per_node; }
  double Replica(int64_t e) const { return weight[e] / static_cast<double>(count[e]); }
  void Recompute() {
    gpu_load.assign(gpus, 0.0);
    for (size_t s = 0; s < slot.size(); ++s) gpu_load[Gpu(static_cast<int64_t>(s))] += Replica(slot[s]);
  }
  double Max() const { return *std::max_element(gpu_load.begin(), gpu_load.end()); }
  // Whether `e`'s replicas may live on `node`.
  bool Allowed(int64_t e, int64_t node) const { return expert_node[e] < 0 || expert_node[e] == node; }
  // Replicas of `e` on `gpu`.
  int64_t On(int64_t gpu, int64_t e) const {
    return std::count(slot.begin() + gpu * per_gpu, slot.begin() + (gpu + 1) * per_gpu, e);
  }
  bool Holds(int64_t gpu, int64_t e) const { return On(gpu, e) > 0; }
  // A GPU holds two replicas of one expert only when the expert has more
  // replicas than the GPUs it may live on (its node's, or all).
  bool DuplicateForced(int64_t replicas) const { return replicas > gpus_per_node; }
};

// Pins every expert to the node its group lives on in `layout`; false when
// some group is spread over several nodes (then the layout breaks EPLB's
// hierarchical structure and cannot seed the search).
bool PinGroupsToNodes(Layout& layout, int64_t num_groups);
// Local search on the hottest GPU, with kicks out of local optima, until the
// max GPU load is at or below `stop_at` or near the bound; `few_moves`: from
// the current placement (stop at the from-scratch balance).
void Search(Layout& L, double stop_at, bool few_moves);
// Splits two replicas of one expert on one GPU where the expert does not
// need them (a swap with a GPU of its node that lacks it).
void SpreadSharedReplicas(Layout& L);

// Renumbers the GPUs of `next` (nodes as blocks, then GPUs within a node) so
// that it keeps as many of the current (GPU, expert) pairs as possible.
std::vector<int64_t> Relabel(const std::vector<int64_t>& next, const std::vector<int64_t>& current, int64_t gpus,
                             int64_t nodes);
// (GPU, expert) pairs of `next` that `current` lacks.
int64_t CountLayerMoves(const std::vector<int64_t>& current, const std::vector<int64_t>& next, int64_t gpus);
// Swaps that take experts back to the GPU that holds them in `current`
// while every GPU stays at or below `cap`.
void PullTowardCurrent(Layout& L, const std::vector<int64_t>& current, double cap);

}  // namespace moex::placement::policy
