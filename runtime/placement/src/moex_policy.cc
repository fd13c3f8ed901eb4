#include "moex/placement/moex_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::placement {
namespace {

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
};

// Pins every expert to the node its group lives on in `layout`; false when
// some group is spread over several nodes (then the layout breaks EPLB's
// hierarchical structure and cannot seed the search).
bool PinGroupsToNodes(Layout& layout, int64_t num_groups) {
  const int64_t experts = static_cast<int64_t>(layout.weight.size()), group_size = experts / num_groups;
  std::vector<int64_t> group_node(num_groups, -1);
  for (size_t s = 0; s < layout.slot.size(); ++s) {
    int64_t g = layout.slot[s] / group_size, node = layout.Node(layout.Gpu(static_cast<int64_t>(s)));
    if (group_node[g] >= 0 && group_node[g] != node) return false;
    group_node[g] = node;
  }
  for (int64_t e = 0; e < experts; ++e) layout.expert_node[e] = group_node[e / group_size];
  return true;
}

// Local search on the hottest GPU until no move lowers it or it is at or
// below `stop_at`. See the header for the two kinds of move.
void Improve(Layout& L, double stop_at, int max_moves = 20000) {
  const int64_t slots = static_cast<int64_t>(L.slot.size()), experts = static_cast<int64_t>(L.weight.size());
  std::vector<std::vector<int64_t>> holders(experts);  // GPU of each replica
  std::vector<double> delta(L.gpus, 0.0);
  std::vector<char> marked(L.gpus, 0);
  std::vector<int64_t> touched;
  for (int move = 0; move < max_moves; ++move) {
    const int64_t hot = std::max_element(L.gpu_load.begin(), L.gpu_load.end()) - L.gpu_load.begin();
    const double top = L.gpu_load[hot];
    if (top <= stop_at) return;
    const double margin = 1e-12 * std::max(1.0, top);
    double best = top - margin;
    enum { kNone, kSwap, kTransfer } kind = kNone;
    int64_t best_a = -1, best_b = -1;

    // Swaps of one replica on the hot GPU with a lighter one on a GPU of the
    // same node.
    const int64_t node = L.Node(hot);
    for (int64_t sa = hot * L.per_gpu; sa < (hot + 1) * L.per_gpu; ++sa) {
      const double la = L.Replica(L.slot[sa]);
      for (int64_t g = node * L.gpus_per_node; g < (node + 1) * L.gpus_per_node; ++g) {
        if (g == hot) continue;
        for (int64_t sb = g * L.per_gpu; sb < (g + 1) * L.per_gpu; ++sb) {
          const double lb = L.Replica(L.slot[sb]);
          if (lb >= la || L.slot[sb] == L.slot[sa]) continue;
          double value = std::max(top - la + lb, L.gpu_load[g] - lb + la);
          if (value < best) {
            best = value, kind = kSwap, best_a = sa, best_b = sb;
          }
        }
      }
    }

    // A redundant replica of a cold expert x (slot c) becomes one more
    // replica of an expert y on the hot GPU.
    for (auto& h : holders) h.clear();
    for (int64_t s = 0; s < slots; ++s) holders[L.slot[s]].push_back(L.Gpu(s));
    std::set<int64_t> hot_experts(L.slot.begin() + hot * L.per_gpu, L.slot.begin() + (hot + 1) * L.per_gpu);
    for (int64_t y : hot_experts) {
      const double cy = static_cast<double>(L.count[y]);
      const double y_drop = L.weight[y] / cy - L.weight[y] / (cy + 1);
      for (int64_t c = 0; c < slots; ++c) {
        const int64_t x = L.slot[c], gc = L.Gpu(c);
        if (x == y || L.count[x] < 2 || !L.Allowed(y, L.Node(gc))) continue;
        const double cx = static_cast<double>(L.count[x]);
        const double x_rise = L.weight[x] / (cx - 1) - L.weight[x] / cx;
        touched.clear();
        auto add = [&](int64_t g, double d) {
          if (!marked[g]) touched.push_back(g), marked[g] = 1;
          delta[g] += d;
        };
        for (int64_t g : holders[y]) add(g, -y_drop);
        add(gc, L.weight[y] / (cy + 1) - L.weight[x] / cx);
        bool skipped = false;
        for (int64_t g : holders[x]) {
          if (g == gc && !skipped) {
            skipped = true;
            continue;
          }
          add(g, x_rise);
        }
        double value = 0;
        for (int64_t g : touched) {
          value = std::max(value, L.gpu_load[g] + delta[g]);
          delta[g] = 0.0, marked[g] = 0;
        }
        if (value < best) best = value, kind = kTransfer, best_a = c, best_b = y;
      }
    }

    if (kind == kNone) return;
    if (kind == kSwap) {
      std::swap(L.slot[best_a], L.slot[best_b]);
    } else {
      --L.count[L.slot[best_a]];
      ++L.count[best_b];
      L.slot[best_a] = best_b;
    }
    L.Recompute();
  }
}

// Minimum-cost perfect assignment (rows to columns) of a square matrix, by
// the Hungarian method with potentials: O(n^3). Returns column of each row.
std::vector<int64_t> Assign(const std::vector<std::vector<double>>& cost) {
  const int64_t n = static_cast<int64_t>(cost.size());
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> u(n + 1, 0.0), v(n + 1, 0.0);
  std::vector<int64_t> row_of(n + 1, 0), way(n + 1, 0);
  for (int64_t i = 1; i <= n; ++i) {
    row_of[0] = i;
    int64_t j0 = 0;
    std::vector<double> min_v(n + 1, inf);
    std::vector<bool> used(n + 1, false);
    do {
      used[j0] = true;
      const int64_t i0 = row_of[j0];
      double step = inf;
      int64_t j1 = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        double reduced = cost[i0 - 1][j - 1] - u[i0] - v[j];
        if (reduced < min_v[j]) min_v[j] = reduced, way[j] = j0;
        if (min_v[j] < step) step = min_v[j], j1 = j;
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[row_of[j]] += step;
          v[j] -= step;
        } else {
          min_v[j] -= step;
        }
      }
      j0 = j1;
    } while (row_of[j0] != 0);
    do {
      const int64_t j1 = way[j0];
      row_of[j0] = row_of[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int64_t> column(n);
  for (int64_t j = 1; j <= n; ++j) column[row_of[j] - 1] = j - 1;
  return column;
}

// Slots of new GPU `a` whose expert current GPU `b` already holds.
int64_t Kept(const std::vector<int64_t>& next, int64_t a, const std::vector<std::set<int64_t>>& held, int64_t b,
             int64_t per_gpu) {
  int64_t kept = 0;
  for (int64_t s = a * per_gpu; s < (a + 1) * per_gpu; ++s) kept += held[b].count(next[s]);
  return kept;
}

// Renumbers the GPUs of `next` (nodes as blocks, then GPUs within a node) so
// that it keeps as many of the current (GPU, expert) pairs as possible.
std::vector<int64_t> Relabel(const std::vector<int64_t>& next, const std::vector<int64_t>& current, int64_t gpus,
                             int64_t nodes) {
  const int64_t per_gpu = static_cast<int64_t>(next.size()) / gpus, gpn = gpus / nodes;
  std::vector<std::set<int64_t>> held(gpus);
  for (size_t s = 0; s < current.size(); ++s) held[static_cast<int64_t>(s) / per_gpu].insert(current[s]);
  // Best GPU matching for every (new node, current node) pair, then nodes.
  std::vector<std::vector<double>> node_cost(nodes, std::vector<double>(nodes));
  std::vector<std::vector<std::vector<int64_t>>> gpu_match(nodes, std::vector<std::vector<int64_t>>(nodes));
  for (int64_t a = 0; a < nodes; ++a) {
    for (int64_t b = 0; b < nodes; ++b) {
      std::vector<std::vector<double>> cost(gpn, std::vector<double>(gpn));
      for (int64_t i = 0; i < gpn; ++i) {
        for (int64_t j = 0; j < gpn; ++j) cost[i][j] = -static_cast<double>(Kept(next, a * gpn + i, held, b * gpn + j, per_gpu));
      }
      gpu_match[a][b] = Assign(cost);
      double total = 0;
      for (int64_t i = 0; i < gpn; ++i) total += cost[i][gpu_match[a][b][i]];
      node_cost[a][b] = total;
    }
  }
  std::vector<int64_t> node_match = Assign(node_cost);
  std::vector<int64_t> out(next.size());
  for (int64_t a = 0; a < nodes; ++a) {
    const int64_t b = node_match[a];
    for (int64_t i = 0; i < gpn; ++i) {
      const int64_t from = a * gpn + i, to = b * gpn + gpu_match[a][b][i];
      std::copy(next.begin() + from * per_gpu, next.begin() + (from + 1) * per_gpu, out.begin() + to * per_gpu);
    }
  }
  return out;
}

int64_t CountLayerMoves(const std::vector<int64_t>& current, const std::vector<int64_t>& next, int64_t gpus) {
  const int64_t per_gpu = static_cast<int64_t>(next.size()) / gpus;
  std::set<std::pair<int64_t, int64_t>> held;
  for (size_t s = 0; s < current.size(); ++s) held.insert({static_cast<int64_t>(s) / per_gpu, current[s]});
  int64_t moves = 0;
  for (size_t s = 0; s < next.size(); ++s) moves += held.count({static_cast<int64_t>(s) / per_gpu, next[s]}) ? 0 : 1;
  return moves;
}

bool Hierarchical(const PlanInput& in) { return IsHierarchical(in.num_groups, in.num_nodes); }

std::vector<int64_t> PlanLayer(const PlanInput& in, size_t layer, const std::vector<int64_t>& eplb) {
  const bool hierarchical = Hierarchical(in);
  const int64_t nodes = hierarchical ? in.num_nodes : 1;
  const std::vector<double>& w = in.load[layer];
  Layout scratch(eplb, w, in.num_gpus, nodes);
  if (hierarchical) PinGroupsToNodes(scratch, in.num_groups);
  Improve(scratch, 0.0);
  if (in.current.empty()) return scratch.slot;

  const double target = scratch.Max() * (1 + 1e-9);
  const std::vector<int64_t>& current = in.current[layer];
  std::vector<int64_t> best = Relabel(scratch.slot, current, in.num_gpus, nodes);
  int64_t best_moves = CountLayerMoves(current, best, in.num_gpus);
  // From the current placement itself, when it has the structure EPLB keeps.
  Layout from_current(current, w, in.num_gpus, nodes);
  if (!hierarchical || PinGroupsToNodes(from_current, in.num_groups)) {
    Improve(from_current, target);
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

absl::StatusOr<EplbPlacement> PlanPlacement(std::string_view policy, const PlanInput& in) {
  MOEX_RETURN_IF_ERROR(CheckPlanInput(in));
  if (policy != "eplb" && policy != "moex") {
    return absl::InvalidArgumentError(StrCat("--policy '", policy, "' is not one of eplb, moex"));
  }
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

std::vector<double> LoadLowerBound(const Matrix& load, int64_t num_replicas, int64_t num_gpus) {
  std::vector<double> bound;
  for (const std::vector<double>& row : load) {
    const double total = std::accumulate(row.begin(), row.end(), 0.0);
    const double most = row.empty() ? 0.0 : *std::max_element(row.begin(), row.end());
    const int64_t max_replicas = std::min<int64_t>(num_replicas - static_cast<int64_t>(row.size()) + 1, num_gpus);
    bound.push_back(std::max(total / static_cast<double>(num_gpus), most / static_cast<double>(max_replicas)));
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
