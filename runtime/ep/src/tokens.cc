#include "moex/ep/tokens.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "moex/core/status_macros.h"

namespace moex::ep {

Tensor SyntheticTokens(const MoeLayerSpec& spec, const Tensor& router, uint64_t seed, double skew,
                       int64_t first, int64_t count) {
  const int64_t H = spec.hidden, E = spec.num_experts, k = spec.top_k;
  // The popularity order of experts is a seeded permutation, so that hot
  // experts are spread over the ranks rather than all on rank 0.
  std::vector<int64_t> order(E);
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::mt19937_64 shuffle(seed ^ 0x5eed);
  std::shuffle(order.begin(), order.end(), shuffle);
  std::vector<double> cumulative(E);
  double total = 0;
  for (int64_t i = 0; i < E; ++i) {
    total += 1.0 / std::pow(static_cast<double>(i + 1), skew);
    cumulative[i] = total;
  }
  std::vector<double> norm(E);
  for (int64_t e = 0; e < E; ++e) {
    double sum = 0;
    for (int64_t h = 0; h < H; ++h) sum += double{router.values[e * H + h]} * router.values[e * H + h];
    norm[e] = std::sqrt(sum) + 1e-12;
  }
  Tensor x({count, H});
  std::vector<int64_t> chosen;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t token = first + t;
    std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(token));
    std::uniform_real_distribution<double> uniform(0.0, total);
    chosen.clear();
    while (static_cast<int64_t>(chosen.size()) < k) {
      double u = uniform(rng);
      int64_t rank = std::lower_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin();
      int64_t expert = order[std::min(rank, E - 1)];
      if (std::find(chosen.begin(), chosen.end(), expert) == chosen.end()) chosen.push_back(expert);
    }
    float* row = x.row(t);
    std::normal_distribution<float> noise(0.0f, 0.3f);
    for (int64_t h = 0; h < H; ++h) row[h] = noise(rng);
    for (int64_t expert : chosen) {
      for (int64_t h = 0; h < H; ++h) row[h] += static_cast<float>(3.0 * router.values[expert * H + h] / norm[expert]);
    }
  }
  return x;
}

absl::StatusOr<Tensor> GatherRows(transport::Transport& transport, const Tensor& local,
                                  int64_t hidden, Deadline deadline) {
  const int world = transport.world_size();
  const int64_t rows = local.shape.empty() ? 0 : local.dim(0);
  std::vector<int64_t> send_rows(world, 0), recv_rows(world, 0);
  send_rows[0] = rows;
  MOEX_RETURN_IF_ERROR(transport.ExchangeCounts(send_rows, recv_rows, deadline));
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  int64_t total = 0;
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = send_rows[r] * hidden * static_cast<int64_t>(sizeof(float));
    recv_bytes[r] = recv_rows[r] * hidden * static_cast<int64_t>(sizeof(float));
    total += recv_rows[r];
  }
  Tensor all(transport.rank() == 0 ? std::vector<int64_t>{total, hidden} : std::vector<int64_t>{0, hidden});
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(local.data()), send_bytes,
                                           reinterpret_cast<std::byte*>(all.data()), recv_bytes,
                                           deadline));
  return all;
}

}  // namespace moex::ep
