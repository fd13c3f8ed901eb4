// moex's placement policy: a plan relabelled and pulled toward the current
// placement, so that fewer experts move (policy_layout.h).
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

// Swaps that take an expert back to a GPU of the same node that holds it in
// `current` (and move no more experts elsewhere), while every GPU stays at
// or below `cap`; the swap that saves most first.
void PullTowardCurrent(Layout& L, const std::vector<int64_t>& current, double cap) {
  std::vector<std::vector<int64_t>> held(L.gpus), holders(L.weight.size());
  for (int64_t s = 0; s < static_cast<int64_t>(current.size()); ++s) {
    held[L.Gpu(s)].push_back(current[s]);
    holders[current[s]].push_back(L.Gpu(s));
  }
  for (auto& h : held) std::sort(h.begin(), h.end());
  auto moved = [&](int64_t g, int64_t e) { return std::binary_search(held[g].begin(), held[g].end(), e) ? 0 : 1; };
  for (;;) {
    int64_t best_saving = 0, best_a = -1, best_b = -1;
    for (int64_t a = 0; a < static_cast<int64_t>(L.slot.size()); ++a) {
      const int64_t g = L.Gpu(a), e = L.slot[a];
      if (!moved(g, e)) continue;
      for (int64_t h : holders[e]) {
        if (h == g || L.Node(h) != L.Node(g) || L.Holds(h, e)) continue;
        for (int64_t b = h * L.per_gpu; b < (h + 1) * L.per_gpu; ++b) {
          const int64_t f = L.slot[b];
          if (f == e || L.Holds(g, f)) continue;
          const int64_t saving = 1 + moved(h, f) - moved(g, f);
          const double shift = L.Replica(e) - L.Replica(f);
          if (saving <= best_saving || L.gpu_load[g] - shift > cap || L.gpu_load[h] + shift > cap) continue;
          best_saving = saving, best_a = a, best_b = b;
        }
      }
    }
    if (best_a < 0) return;
    std::swap(L.slot[best_a], L.slot[best_b]);
    L.Recompute();
  }
}

}  // namespace moex::placement::policy
