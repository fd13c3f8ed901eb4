// moex's placement policy: the local search on one layer (policy_layout.h).
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <tuple>

#include "policy_layout.h"

namespace moex::placement::policy {

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

// Replicas in `experts` beyond the first of their expert.
int64_t Duplicates(std::vector<int64_t> experts) {
  std::sort(experts.begin(), experts.end());
  return static_cast<int64_t>(experts.size()) -
         (std::unique(experts.begin(), experts.end()) - experts.begin());
}

// The k-slot subsets of one GPU, lightest first: what an exchange between
// two GPUs trades.
struct Subsets {
  int64_t k = 0;
  std::vector<std::pair<double, int64_t>> by_load;  // (load, subset), sorted
  std::vector<int64_t> slots;                       // [subsets][k]
};

Subsets SubsetsOf(const Layout& L, int64_t gpu, int64_t k) {
  Subsets out;
  out.k = k;
  std::vector<int64_t> pick(k);
  std::iota(pick.begin(), pick.end(), 0);
  for (int64_t index = 0;; ++index) {
    double load = 0;
    for (int64_t i : pick) {
      out.slots.push_back(gpu * L.per_gpu + i);
      load += L.Replica(L.slot[gpu * L.per_gpu + i]);
    }
    out.by_load.push_back({load, index});
    int64_t i = k - 1;
    while (i >= 0 && pick[i] == L.per_gpu - k + i) --i;
    if (i < 0) break;
    ++pick[i];
    for (int64_t j = i + 1; j < k; ++j) pick[j] = pick[j - 1] + 1;
  }
  std::sort(out.by_load.begin(), out.by_load.end());
  return out;
}

// The largest k for which every exchange of k slots between two GPUs is
// searched: half a GPU's slots (trading k slots or the other per_gpu - k is
// the same split of the two GPUs' replicas), while a GPU has at most
// `kMaxSubsets` subsets of that size (at least single swaps).
int64_t MaxExchange(int64_t per_gpu) {
  constexpr double kMaxSubsets = 1000;
  int64_t k = 0;
  double subsets = 1;  // C(per_gpu, k)
  while (k + 1 <= per_gpu / 2) {
    subsets = subsets * static_cast<double>(per_gpu - k) / static_cast<double>(k + 1);
    if (subsets > kMaxSubsets && k >= 1) break;
    ++k;
  }
  return k;
}

// The best move found so far in one step of the search: only moves that end
// every GPU they touch below `value` count.
struct Move {
  enum Kind { kNone, kExchange, kTransfer } kind = kNone;
  double value = 0;                // the highest load among the GPUs it touches, afterwards
  std::vector<int64_t> from, to;   // kExchange: slots of the hot GPU and of the other, swapped pairwise
  int64_t slot = -1, expert = -1;  // kTransfer: the slot that becomes a replica of `expert`

  explicit Move(double top) : value(top - 1e-12 * std::max(1.0, top)) {}
};

// Exchanges of k replicas between the hot GPU and GPU `g` (same node): for
// every k-subset of the hot GPU, the subsets of g whose load leaves the two
// closest to even, nearest first, the first that creates no duplicate.
void SearchExchanges(const Layout& L, int64_t hot, int64_t g, const Subsets& hot_subsets, const Subsets& g_subsets,
                     Move* best) {
  const double top = L.gpu_load[hot], other = L.gpu_load[g];
  if (other >= top) return;
  const int64_t k = hot_subsets.k;
  // Two GPUs with no expert in common and none twice can trade anything.
  std::vector<int64_t> both(L.slot.begin() + hot * L.per_gpu, L.slot.begin() + (hot + 1) * L.per_gpu);
  both.insert(both.end(), L.slot.begin() + g * L.per_gpu, L.slot.begin() + (g + 1) * L.per_gpu);
  const bool any_trade = Duplicates(std::move(both)) == 0;
  std::vector<int64_t> traded(2 * k);
  auto valid = [&](int64_t a, int64_t b) {  // subset a of the hot GPU against subset b of g: no more pairs
    if (any_trade) return true;
    for (int64_t i = 0; i < k; ++i) {
      traded[i] = L.slot[hot_subsets.slots[a * k + i]];
      traded[k + i] = L.slot[g_subsets.slots[b * k + i]];
    }
    auto extra = [](int64_t n) { return std::max<int64_t>(n - 1, 0); };
    int64_t change = 0;
    for (int64_t i = 0; i < 2 * k; ++i) {
      const int64_t x = traded[i];
      if (std::find(traded.begin(), traded.begin() + i, x) != traded.begin() + i) continue;
      const int64_t out = std::count(traded.begin(), traded.begin() + k, x), in = std::count(traded.begin() + k, traded.end(), x);
      const int64_t on_hot = L.On(hot, x), on_g = L.On(g, x);
      change += extra(on_hot - out + in) + extra(on_g - in + out) - extra(on_hot) - extra(on_g);
    }
    return change <= 0;
  };
  const auto& candidates = g_subsets.by_load;
  const double even = (top - other) / 2;  // the load to shift for an even split
  for (const auto& subset : hot_subsets.by_load) {
    // Named copies: clang 14 (the fuzz build) cannot capture structured bindings.
    const double load_a = subset.first;
    const int64_t a = subset.second;
    auto consider = [&](size_t j) {  // false once farther candidates cannot be better
      const double shift = load_a - candidates[j].first;
      const double value = std::max(top - shift, other + shift);
      if (value >= best->value) return false;
      if (!valid(a, candidates[j].second)) return true;
      best->kind = Move::kExchange, best->value = value;
      best->from.assign(hot_subsets.slots.begin() + a * k, hot_subsets.slots.begin() + (a + 1) * k);
      best->to.assign(g_subsets.slots.begin() + candidates[j].second * k,
                      g_subsets.slots.begin() + (candidates[j].second + 1) * k);
      return false;
    };
    const size_t mid = std::lower_bound(candidates.begin(), candidates.end(), std::make_pair(load_a - even, int64_t{-1})) -
                       candidates.begin();
    for (size_t j = mid; j < candidates.size() && consider(j); ++j) {
    }
    for (size_t j = mid; j > 0 && consider(j - 1); --j) {
    }
  }
}

// A transfer of the hot GPU that the local search refused (some GPU would
// end at or above its maximum): a kick that may lead out of a local optimum.
struct Kick {
  double value;
  int64_t slot, expert;
  bool operator<(const Kick& o) const { return std::tie(value, slot, expert) < std::tie(o.value, o.slot, o.expert); }
};

// The `capacity` best kicks seen, best first.
struct Kicks {
  size_t capacity = 0;
  std::vector<Kick> best;
  double Threshold() const {
    return best.size() < capacity ? std::numeric_limits<double>::infinity() : best.back().value;
  }
  void Offer(const Kick& kick) {
    if (best.size() == capacity && !(kick < best.back())) return;
    best.insert(std::upper_bound(best.begin(), best.end(), kick), kick);
    if (best.size() > capacity) best.pop_back();
  }
};

// Transfers: slot `c`, a redundant replica of expert x, becomes one more
// replica of expert y, where c is on the hot GPU or y is (then y's load per
// replica drops there and on every GPU holding it). With `kicks`, the best
// of those that do not beat `best` go there.
void SearchTransfers(const Layout& L, int64_t hot, Move* best, Kicks* kicks) {
  const int64_t slots = static_cast<int64_t>(L.slot.size()), experts = static_cast<int64_t>(L.weight.size());
  // GPU of each replica, expert by expert: holders[first[e] .. first[e + 1]).
  std::vector<int64_t> first(experts + 1, 0), holders(slots);
  for (int64_t e : L.slot) ++first[e + 1];
  for (int64_t e = 0; e < experts; ++e) first[e + 1] += first[e];
  {
    std::vector<int64_t> next(first.begin(), first.end() - 1);
    for (int64_t s = 0; s < slots; ++s) holders[next[L.slot[s]]++] = L.Gpu(s);
  }
  // Experts with two replicas on one GPU give up one of those first, so
  // that no GPU is left with two replicas its expert no longer needs.
  std::vector<char> shares_gpu(experts, 0);
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t i = first[e] + 1; i < first[e + 1]; ++i) shares_gpu[e] |= holders[i] == holders[i - 1];
  }
  // The two most loaded GPUs holding each expert: a GPU keeping a replica of
  // x while x loses one rises by x's rise in load per replica.
  std::vector<std::array<int64_t, 2>> hottest_holders(experts, {-1, -1});
  for (int64_t e = 0; e < experts; ++e) {
    auto& [h1, h2] = hottest_holders[e];
    for (int64_t i = first[e]; i < first[e + 1]; ++i) {
      const int64_t g = holders[i];
      if (g == h1 || g == h2) continue;
      if (h1 < 0 || L.gpu_load[g] > L.gpu_load[h1]) {
        h2 = h1, h1 = g;
      } else if (h2 < 0 || L.gpu_load[g] > L.gpu_load[h2]) {
        h2 = g;
      }
    }
  }
  std::vector<double> delta(L.gpus, 0.0);
  std::vector<char> marked(L.gpus, 0);
  std::vector<int64_t> touched;
  auto cutoff = [&] { return kicks ? std::max(best->value, kicks->Threshold()) : best->value; };
  auto consider = [&](int64_t c, int64_t y, bool y_on_gc) {
    const int64_t x = L.slot[c], gc = L.Gpu(c);
    if (x == y || L.count[x] < 2 || !L.Allowed(y, L.Node(gc))) return;
    if (shares_gpu[x] && L.On(gc, x) < 2) return;
    const double cx = static_cast<double>(L.count[x]), cy = static_cast<double>(L.count[y]);
    const double x_share = L.weight[x] / cx, y_share = L.weight[y] / (cy + 1);
    // GPU gc's load afterwards is at least this unless it already holds y,
    // which only an expert with more replicas than GPUs may.
    const bool forced = L.DuplicateForced(L.count[y] + 1);
    const bool too_high = L.gpu_load[gc] - x_share + y_share >= cutoff();
    if (y_on_gc ? !forced : too_high) return;
    const double y_drop = L.weight[y] / cy - y_share;
    const double x_rise = L.weight[x] / (cx - 1) - x_share;
    // The hottest other GPU keeping a replica of x ends at least this high.
    const auto [h1, h2] = hottest_holders[x];
    const int64_t kept = h1 != gc ? h1 : h2;
    if (kept >= 0 && L.gpu_load[kept] + x_rise - y_drop >= cutoff()) return;
    touched.clear();
    auto add = [&](int64_t g, double d) {
      if (!marked[g]) touched.push_back(g), marked[g] = 1;
      delta[g] += d;
    };
    for (int64_t i = first[y]; i < first[y + 1]; ++i) add(holders[i], -y_drop);
    add(gc, y_share - x_share);
    bool skipped = false;
    for (int64_t i = first[x]; i < first[x + 1]; ++i) {
      if (holders[i] == gc && !skipped) {
        skipped = true;
        continue;
      }
      add(holders[i], x_rise);
    }
    double value = 0;
    for (int64_t g : touched) {
      value = std::max(value, L.gpu_load[g] + delta[g]);
      delta[g] = 0.0, marked[g] = 0;
    }
    if (value < best->value) {
      best->kind = Move::kTransfer, best->value = value, best->slot = c, best->expert = y;
    } else if (kicks) {
      kicks->Offer({value, c, y});
    }
  };
  std::vector<int64_t> hot_experts(L.slot.begin() + hot * L.per_gpu, L.slot.begin() + (hot + 1) * L.per_gpu);
  std::sort(hot_experts.begin(), hot_experts.end());
  hot_experts.erase(std::unique(hot_experts.begin(), hot_experts.end()), hot_experts.end());
  const double top = L.gpu_load[hot];
  // The largest load per replica among each GPU's redundant replicas: no
  // transfer from GPU g leaves it below its load less that.
  std::vector<double> most_given(L.gpus, -1.0);
  for (int64_t s = 0; s < slots; ++s) {
    if (L.count[L.slot[s]] > 1) most_given[L.Gpu(s)] = std::max(most_given[L.Gpu(s)], L.Replica(L.slot[s]));
  }
  std::vector<char> y_on(L.gpus);
  for (int64_t y : hot_experts) {
    // The hot GPU's load afterwards is at least this.
    const double cy = static_cast<double>(L.count[y]), y_share = L.weight[y] / (cy + 1);
    if (top - static_cast<double>(L.On(hot, y)) * (L.weight[y] / cy - y_share) >= cutoff()) continue;
    std::fill(y_on.begin(), y_on.end(), 0);
    for (int64_t i = first[y]; i < first[y + 1]; ++i) y_on[holders[i]] = 1;
    for (int64_t gc = 0; gc < L.gpus; ++gc) {
      if (gc == hot || most_given[gc] < 0) continue;
      if (!y_on[gc] && L.gpu_load[gc] - most_given[gc] + y_share >= cutoff()) continue;
      for (int64_t c = gc * L.per_gpu; c < (gc + 1) * L.per_gpu; ++c) consider(c, y, y_on[gc]);
    }
  }
  // Slot c on the hot GPU to an expert y it lacks: the hot GPU ends at least
  // at top - (c's load) + (y's load per replica afterwards), so the lightest
  // such y first, until that alone is too high.
  std::vector<char> on_hot(experts, 0);
  for (int64_t y : hot_experts) on_hot[y] = 1;
  std::vector<std::pair<double, int64_t>> lightest_next;  // (load per replica with one more, expert)
  for (int64_t y = 0; y < experts; ++y) {
    if (!on_hot[y]) lightest_next.push_back({L.weight[y] / static_cast<double>(L.count[y] + 1), y});
  }
  std::sort(lightest_next.begin(), lightest_next.end());
  for (int64_t c = hot * L.per_gpu; c < (hot + 1) * L.per_gpu; ++c) {
    if (L.count[L.slot[c]] < 2) continue;
    for (int64_t y : hot_experts) consider(c, y, true);
    for (const auto& [y_share, y] : lightest_next) {
      if (top - L.Replica(L.slot[c]) + y_share >= cutoff()) break;
      consider(c, y, false);
    }
  }
}

void ApplyTransfer(Layout& L, int64_t slot, int64_t expert) {
  --L.count[L.slot[slot]];
  ++L.count[expert];
  L.slot[slot] = expert;
  L.Recompute();
}

// Local search on the hottest GPU until no move lowers it or it is at or
// below `stop_at`. See the header for the moves. With `kicks`, at a local
// optimum: the best of the transfers it refused there.
void Improve(Layout& L, double stop_at, Kicks* kicks, int64_t max_k, int max_moves = 20000) {
  if (kicks) kicks->best.clear();
  // Subsets of each GPU's slots by size, kept while the GPU's replicas and
  // their loads stay the same.
  std::vector<std::vector<Subsets>> subsets(L.gpus);
  auto subsets_of = [&](int64_t g, int64_t k) -> const Subsets& {
    if (subsets[g].empty()) {
      subsets[g].resize(max_k + 1);
      for (int64_t j = 1; j <= max_k; ++j) subsets[g][j] = SubsetsOf(L, g, j);
    }
    return subsets[g][k];
  };
  for (int move = 0; move < max_moves; ++move) {
    const int64_t hot = std::max_element(L.gpu_load.begin(), L.gpu_load.end()) - L.gpu_load.begin();
    const double top = L.gpu_load[hot];
    if (top <= stop_at) return;
    Move best(top);

    // Coldest partner first: no exchange with g ends below (top + its load) / 2.
    const int64_t node = L.Node(hot);
    std::vector<int64_t> partners(L.gpus_per_node);
    std::iota(partners.begin(), partners.end(), node * L.gpus_per_node);
    std::stable_sort(partners.begin(), partners.end(),
                     [&](int64_t a, int64_t b) { return L.gpu_load[a] < L.gpu_load[b]; });
    for (int64_t g : partners) {
      if ((top + L.gpu_load[g]) / 2 >= best.value) break;
      if (g == hot) continue;
      for (int64_t k = 1; k <= max_k; ++k) SearchExchanges(L, hot, g, subsets_of(hot, k), subsets_of(g, k), &best);
    }
    SearchTransfers(L, hot, &best, nullptr);

    if (best.kind == Move::kNone) {
      if (kicks) SearchTransfers(L, hot, &best, kicks);
      return;
    }
    if (best.kind == Move::kExchange) {
      for (size_t i = 0; i < best.from.size(); ++i) std::swap(L.slot[best.from[i]], L.slot[best.to[i]]);
      L.Recompute();
      subsets[hot].clear();
      subsets[L.Gpu(best.to[0])].clear();
    } else {
      ApplyTransfer(L, best.slot, best.expert);
      for (auto& s : subsets) s.clear();
    }
  }
}

// Below this max GPU load no placement with the layout's budget and
// structure exists: the mean GPU load, each node's load over its GPUs (an
// expert's replicas stay on its node), and the hottest expert over the most
// replicas its node's slots allow.
double Bound(const Layout& L) {
  const int64_t nodes = L.gpus / L.gpus_per_node, experts = static_cast<int64_t>(L.weight.size());
  std::vector<double> node_load(nodes, 0.0);
  for (int64_t g = 0; g < L.gpus; ++g) node_load[L.Node(g)] += L.gpu_load[g];
  double bound = *std::max_element(node_load.begin(), node_load.end()) / static_cast<double>(L.gpus_per_node);
  std::vector<int64_t> node_experts(nodes, 0);
  for (int64_t e = 0; e < experts; ++e) {
    if (L.expert_node[e] >= 0) ++node_experts[L.expert_node[e]];
  }
  const int64_t node_slots = L.per_gpu * L.gpus_per_node;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t on_node = L.expert_node[e] >= 0 ? node_experts[L.expert_node[e]] : experts;
    bound = std::max(bound, L.weight[e] / static_cast<double>(node_slots - on_node + 1));
  }
  return bound;
}

// Plans within this fraction of Bound() count as balanced: the search stops
// there. Kicks are tried only above kKickAbove of it, where they can gain
// more than they cost.
constexpr double kBalanced = 1e-4, kKickAbove = 1e-3;
// Kicks tried from one local optimum, and in all, per search.
constexpr size_t kKicksPerOptimum = 16;
constexpr int kMaxKicks = 128;

// Local search, then, while it is stuck well above the bound, kicks: a
// refused transfer, followed by the local search again; kept only when the
// result beats the optimum it left.
void Search(Layout& L, double stop_at, bool few_moves) {
  const double bound = Bound(L);
  // From scratch, balanced within kBalanced is enough; from the current
  // placement, the search must reach the balance planned from scratch.
  if (!few_moves) stop_at = std::max(stop_at, bound * (1 + kBalanced));
  const int64_t max_k = MaxExchange(L.per_gpu);
  // From the current placement: exchanges of fewer replicas first, which
  // move fewer experts.
  for (int64_t k = 1; few_moves && k < max_k; ++k) Improve(L, stop_at, nullptr, k);
  Kicks kicks{.capacity = kKicksPerOptimum, .best = {}};
  Improve(L, stop_at, &kicks, max_k);
  int tried = 0;
  while (L.Max() > std::max(stop_at, bound * (1 + kKickAbove)) && !kicks.best.empty() && tried < kMaxKicks) {
    const double margin = 1e-12 * std::max(1.0, L.Max());
    bool improved = false;
    const std::vector<Kick> candidates = std::move(kicks.best);
    for (size_t i = 0; i < candidates.size() && tried < kMaxKicks; ++i, ++tried) {
      Layout trial = L;
      ApplyTransfer(trial, candidates[i].slot, candidates[i].expert);
      Kicks next{.capacity = kKicksPerOptimum, .best = {}};
      Improve(trial, stop_at, &next, max_k);
      if (trial.Max() < L.Max() - margin) {
        L = std::move(trial), kicks = std::move(next), improved = true;
        break;
      }
    }
    if (!improved) break;
  }
}

// Two replicas of one expert on one GPU waste a slot unless the expert has
// more replicas than GPUs to put them on. Each such pair (EPLB's packing
// makes some) is split by a swap with a GPU of the node that lacks the
// expert, the swap that leaves the two GPUs lowest, if it raises neither
// above the current maximum.
void SpreadSharedReplicas(Layout& L) {
  const double top = L.Max() * (1 + 1e-12);
  for (int64_t g = 0; g < L.gpus; ++g) {
    for (int64_t a = g * L.per_gpu; a < (g + 1) * L.per_gpu; ++a) {
      const int64_t e = L.slot[a];
      const bool second = std::find(L.slot.begin() + g * L.per_gpu, L.slot.begin() + a, e) != L.slot.begin() + a;
      if (!second || L.DuplicateForced(L.count[e])) continue;
      double best = top;
      int64_t best_b = -1;
      const int64_t node = L.Node(g);
      for (int64_t h = node * L.gpus_per_node; h < (node + 1) * L.gpus_per_node; ++h) {
        if (h == g || L.Holds(h, e)) continue;
        for (int64_t b = h * L.per_gpu; b < (h + 1) * L.per_gpu; ++b) {
          if (L.Holds(g, L.slot[b])) continue;
          const double shift = L.Replica(e) - L.Replica(L.slot[b]);
          const double value = std::max(L.gpu_load[g] - shift, L.gpu_load[h] + shift);
          if (value > top || (best_b >= 0 && value >= best)) continue;
          best = value, best_b = b;
        }
      }
      if (best_b < 0) continue;
      std::swap(L.slot[a], L.slot[best_b]);
      L.Recompute();
    }
  }
}

}  // namespace moex::placement::policy
