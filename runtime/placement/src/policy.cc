#include "moex/placement/policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "moex/core/status_macros.h"
#include "moex/core/echo.h"
#include "moex/core/str_cat.h"
#include "policy_layout.h"

namespace moex::placement {
namespace {

using policy::CountLayerMoves;
using policy::Layout;
using policy::PinGroupsToNodes;
using policy::PullTowardCurrent;
using policy::Relabel;
using policy::Search;
using policy::SpreadSharedReplicas;

bool Hierarchical(const PlanInput& in) { return IsHierarchical(in.num_groups, in.num_nodes); }

std::vector<int64_t> PlanLayer(const PlanInput& in, size_t layer, const std::vector<int64_t>& eplb) {
  const bool hierarchical = Hierarchical(in);
  const int64_t nodes = hierarchical ? in.num_nodes : 1;
  const std::vector<double>& w = in.load[layer];
  Layout scratch(eplb, w, in.num_gpus, nodes);
  if (hierarchical) PinGroupsToNodes(scratch, in.num_groups);
  Search(scratch, 0.0, false);
  SpreadSharedReplicas(scratch);
  if (in.current.empty()) return scratch.slot;

  const double target = scratch.Max() * (1 + 1e-9);
  const std::vector<int64_t>& current = in.current[layer];
  Layout relabelled(Relabel(scratch.slot, current, in.num_gpus, nodes), w, in.num_gpus, nodes);
  PullTowardCurrent(relabelled, current, target);
  std::vector<int64_t> best = relabelled.slot;
  int64_t best_moves = CountLayerMoves(current, best, in.num_gpus);
  // From the current placement itself, when it has the structure EPLB keeps.
  Layout from_current(current, w, in.num_gpus, nodes);
  if (!hierarchical || PinGroupsToNodes(from_current, in.num_groups)) {
    Search(from_current, target, true);
    PullTowardCurrent(from_current, current, target);
    int64_t moves = CountLayerMoves(current, from_current.slot, in.num_gpus);
    if (from_current.Max() <= target && moves < best_moves) best = from_current.slot;
  }
  return best;
}

}  // namespace

absl::Status CheckPlanInput(const PlanInput& in) {
  MOEX_RETURN_IF_ERROR(CheckBudget(in.load, in.num_replicas, in.num_groups, in.num_nodes, in.num_gpus));
  const int64_t num_logical = static_cast<int64_t>(in.load[0].size());
  if (!in.current.empty()) {
    if (in.current.size() != in.load.size()) {
      return absl::InvalidArgumentError(StrCat("the current placement has ", in.current.size(), " layers, the load ", in.load.size()));
    }
    for (size_t l = 0; l < in.current.size(); ++l) {
      if (static_cast<int64_t>(in.current[l].size()) != in.num_replicas) {
        return absl::InvalidArgumentError(StrCat("the current placement of layer ", l, " has ", in.current[l].size(),
                                                 " slots, --replicas is ", in.num_replicas));
      }
      std::vector<bool> seen(num_logical, false);
      for (size_t s = 0; s < in.current[l].size(); ++s) {
        int64_t e = in.current[l][s];
        if (e < 0 || e >= num_logical) {
          return absl::InvalidArgumentError(StrCat("the current placement of layer ", l, " puts expert ", e, " in slot ", s,
                                                   ", outside [0, ", num_logical, ")"));
        }
        seen[e] = true;
      }
      for (int64_t e = 0; e < num_logical; ++e) {
        if (!seen[e]) return absl::InvalidArgumentError(StrCat("the current placement of layer ", l, " holds no replica of expert ", e));
      }
    }
  }
  return absl::OkStatus();
}

EplbPlacement FromPhy2Log(IndexMatrix phy2log, int64_t num_logical) {
  EplbPlacement out;
  const size_t layers = phy2log.size();
  const int64_t slots = layers ? static_cast<int64_t>(phy2log[0].size()) : 0;
  out.phyrank.assign(layers, std::vector<int64_t>(slots));
  out.logcnt.assign(layers, std::vector<int64_t>(num_logical, 0));
  out.log2phy.assign(layers, IndexMatrix(num_logical, std::vector<int64_t>(slots - num_logical + 1, -1)));
  for (size_t l = 0; l < layers; ++l) {
    for (int64_t s = 0; s < slots; ++s) {
      int64_t e = phy2log[l][s];
      out.phyrank[l][s] = out.logcnt[l][e]++;
      out.log2phy[l][e][out.phyrank[l][s]] = s;
    }
  }
  out.phy2log = std::move(phy2log);
  return out;
}

absl::StatusOr<std::string> CanonicalPolicy(std::string_view name) {
  if (name == "moex") return std::string(kDefaultPolicy);
  if (name == kDefaultPolicy || name == "eplb") return std::string(name);
  return absl::InvalidArgumentError(StrCat("policy '", Echo(name), "' is not one of ", kPolicyNames));
}

absl::StatusOr<EplbPlacement> PlanPlacement(std::string_view name, const PlanInput& in) {
  MOEX_RETURN_IF_ERROR(CheckPlanInput(in));
  MOEX_ASSIGN_OR_RETURN(const std::string policy, CanonicalPolicy(name));
  MOEX_ASSIGN_OR_RETURN(EplbPlacement eplb,
                        RebalanceExperts(in.load, in.num_replicas, in.num_groups, in.num_nodes, in.num_gpus));
  if (policy == "eplb") return eplb;
  IndexMatrix phy2log;
  for (size_t l = 0; l < in.load.size(); ++l) phy2log.push_back(PlanLayer(in, l, eplb.phy2log[l]));
  return FromPhy2Log(std::move(phy2log), static_cast<int64_t>(in.load[0].size()));
}

int64_t CountMoves(const IndexMatrix& current, const IndexMatrix& next, int64_t num_gpus) {
  int64_t moves = 0;
  for (size_t l = 0; l < next.size() && l < current.size(); ++l) moves += CountLayerMoves(current[l], next[l], num_gpus);
  return moves;
}

namespace {

// False proves that no placement of `w` over `slots` slots, `gpus` GPUs with
// slots / gpus each, keeps every GPU at or below `t`. Each expert needs
// replicas enough that either two of them share a GPU (2 w / c <= t) or the
// c GPUs holding one each, with their other c (per GPU - 1) slots, average
// at most t; those slots carry at least the smallest loads any slot can:
// expert j's load over the most replicas it can still get (what it needs so
// far, plus the slots no expert needs yet), that many times. Needs only grow,
// so this repeats until they settle or exceed the slots.
bool MayReach(const std::vector<double>& w, int64_t slots, int64_t gpus, double t) {
  const int64_t experts = static_cast<int64_t>(w.size()), others = slots / gpus - 1;
  std::vector<int64_t> need(experts, 1);
  std::vector<std::pair<double, int64_t>> items(experts);  // (load per slot, slots), lightest first
  std::vector<double> sum_before(experts + 1);
  std::vector<int64_t> count_before(experts + 1);
  for (bool changed = true; changed;) {
    const int64_t spare = slots - std::accumulate(need.begin(), need.end(), int64_t{0});
    if (spare < 0) return false;
    for (int64_t j = 0; j < experts; ++j) items[j] = {w[j] / static_cast<double>(need[j] + spare), need[j] + spare};
    std::sort(items.begin(), items.end());
    for (int64_t j = 0; j < experts; ++j) {
      count_before[j + 1] = count_before[j] + items[j].second;
      sum_before[j + 1] = sum_before[j] + items[j].first * static_cast<double>(items[j].second);
    }
    auto smallest = [&](int64_t m) {  // the least m slots can carry
      const int64_t j = std::upper_bound(count_before.begin(), count_before.end(), m) - count_before.begin() - 1;
      if (j >= experts) return sum_before[experts];
      return sum_before[j] + items[j].first * static_cast<double>(m - count_before[j]);
    };
    changed = false;
    for (int64_t e = 0; e < experts; ++e) {
      int64_t c = need[e];
      for (; c <= need[e] + spare; ++c) {
        const double share = w[e] / static_cast<double>(c);
        if ((c >= 2 && 2 * share <= t) || share + smallest(c * others) / static_cast<double>(c) <= t) break;
      }
      if (c > need[e] + spare) return false;
      if (c != need[e]) need[e] = c, changed = true;
    }
  }
  return true;
}

}  // namespace

std::vector<double> LoadLowerBound(const Matrix& load, int64_t num_replicas, int64_t num_gpus) {
  std::vector<double> bound;
  for (const std::vector<double>& row : load) {
    const double total = std::accumulate(row.begin(), row.end(), 0.0);
    const double most = row.empty() ? 0.0 : *std::max_element(row.begin(), row.end());
    const int64_t max_replicas = std::min<int64_t>(num_replicas - static_cast<int64_t>(row.size()) + 1, num_gpus);
    double refuted = std::max(total / static_cast<double>(num_gpus), most / static_cast<double>(max_replicas));
    // Bisect between a load MayReach refutes and one it does not.
    double open = refuted;
    while (open < total && !MayReach(row, num_replicas, num_gpus, open)) refuted = open, open = std::min(total, 2 * open);
    for (int i = 0; i < 60 && open - refuted > 1e-12 * open; ++i) {
      const double mid = (refuted + open) / 2;
      (MayReach(row, num_replicas, num_gpus, mid) ? open : refuted) = mid;
    }
    bound.push_back(refuted);
  }
  return bound;
}

}  // namespace moex::placement

namespace moex::placement {

Matrix ZipfLoad(int64_t layers, int64_t experts, double skew, uint64_t seed, double tokens) {
  std::mt19937_64 rng(seed);
  Matrix load(layers, std::vector<double>(experts));
  for (auto& row : load) {
    std::vector<int64_t> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    double norm = 0;
    for (int64_t i = 0; i < experts; ++i) norm += std::pow(static_cast<double>(i + 1), -skew);
    for (int64_t i = 0; i < experts; ++i) {
      row[order[i]] = std::round(tokens * std::pow(static_cast<double>(i + 1), -skew) / norm);
    }
  }
  return load;
}

Matrix Drift(const Matrix& load, double drift, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> factor(1 - drift, 1 + drift);
  Matrix out = load;
  for (auto& row : out) {
    for (double& w : row) w = std::round(w * factor(rng));
  }
  return out;
}

}  // namespace moex::placement
