#include "moex/bench/bench.h"

#include <mpi.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>

#include "moex/placement/policy.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"

namespace moex::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// This process's minor page faults so far.
double MinorFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_minflt);
}

// Per-rank byte counts of one plain all-to-all-v.
struct Exchange {
  std::vector<int64_t> send, recv;
  int64_t send_total() const { return std::accumulate(send.begin(), send.end(), int64_t{0}); }
  int64_t recv_total() const { return std::accumulate(recv.begin(), recv.end(), int64_t{0}); }
};

// The two plain exchanges a dispatch + combine of `send_rows[r]` rows to and
// `recv_rows[r]` rows from each other rank amount to: records of the hidden
// state with (slot, weight) pairs one way, hidden-size sums back.
std::pair<Exchange, Exchange> PlainExchanges(std::span<const int64_t> send_rows, std::span<const int64_t> recv_rows,
                                             int rank, int64_t hidden, int64_t top_k) {
  const int64_t record = (hidden + 2 * top_k) * static_cast<int64_t>(sizeof(float));
  const int64_t row = hidden * static_cast<int64_t>(sizeof(float));
  const size_t world = send_rows.size();
  Exchange dispatch{std::vector<int64_t>(world, 0), std::vector<int64_t>(world, 0)};
  Exchange combine = dispatch;
  for (size_t r = 0; r < world; ++r) {
    if (static_cast<int>(r) == rank) continue;  // neither side moves a token's visit to its own rank
    dispatch.send[r] = send_rows[r] * record;
    dispatch.recv[r] = recv_rows[r] * record;
    combine.send[r] = recv_rows[r] * row;
    combine.recv[r] = send_rows[r] * row;
  }
  return {std::move(dispatch), std::move(combine)};
}

// Times the two plain exchanges back to back.
class Baseline {
 public:
  Baseline(const AllToAllVFn& fn, std::pair<Exchange, Exchange> exchanges)
      : fn_(fn), dispatch_(std::move(exchanges.first)), combine_(std::move(exchanges.second)) {
    send_.assign(static_cast<size_t>(std::max(dispatch_.send_total(), combine_.send_total())), std::byte{1});
    recv_.assign(static_cast<size_t>(std::max(dispatch_.recv_total(), combine_.recv_total())), std::byte{0});
  }
  absl::StatusOr<double> Time() {
    auto start = Clock::now();
    MOEX_RETURN_IF_ERROR(fn_(send_.data(), dispatch_.send, recv_.data(), dispatch_.recv));
    MOEX_RETURN_IF_ERROR(fn_(send_.data(), combine_.send, recv_.data(), combine_.recv));
    return SecondsSince(start);
  }

 private:
  const AllToAllVFn& fn_;
  Exchange dispatch_, combine_;
  std::vector<std::byte> send_, recv_;
};

// Every rank's `mine` [reps x figures], reduced to the slowest rank's value
// of each entry.
absl::StatusOr<std::vector<double>> Slowest(transport::Transport& t, const std::vector<double>& mine,
                                            Deadline deadline) {
  std::vector<double> all(mine.size() * static_cast<size_t>(t.world_size()));
  MOEX_RETURN_IF_ERROR(t.AllGather(mine, all, deadline));
  std::vector<double> out(mine.size(), 0.0);
  for (int r = 0; r < t.world_size(); ++r) {
    for (size_t i = 0; i < mine.size(); ++i) out[i] = std::max(out[i], all[r * mine.size() + i]);
  }
  return out;
}

// Column `figure` of the [reps x figures] table, in microseconds.
std::vector<double> Column(const std::vector<double>& table, size_t figures, size_t figure) {
  std::vector<double> out;
  for (size_t i = figure; i < table.size(); i += figures) out.push_back(1e6 * table[i]);
  return out;
}

// k distinct experts per token, drawn by popularity (Zipf of exponent
// `skew`, the same popularity on every rank; uniform at 0) without
// replacement: the k largest of u^(1/w) (Efraimidis-Spirakis).
std::vector<int32_t> SkewedRouting(int64_t tokens, int64_t experts, int64_t top_k, double skew, uint64_t seed,
                                   int rank) {
  std::vector<double> popularity(static_cast<size_t>(experts), 1.0);
  if (skew > 0) popularity = placement::ZipfLoad(1, experts, skew, seed, 1.0)[0];
  std::mt19937_64 rng(seed * 1000003 + static_cast<uint64_t>(rank));
  std::uniform_real_distribution<double> uniform(1e-12, 1.0);
  std::vector<int32_t> topk(static_cast<size_t>(tokens * top_k));
  std::vector<std::pair<double, int32_t>> keys(static_cast<size_t>(experts));
  for (int64_t tok = 0; tok < tokens; ++tok) {
    for (int64_t e = 0; e < experts; ++e) {
      keys[e] = {std::log(uniform(rng)) / std::max(popularity[e], 1e-300), static_cast<int32_t>(e)};
    }
    std::partial_sort(keys.begin(), keys.begin() + top_k, keys.end(), std::greater<>());
    for (int64_t j = 0; j < top_k; ++j) topk[tok * top_k + j] = keys[j].second;
  }
  return topk;
}

Tensor RandomTokens(int64_t tokens, int64_t hidden, uint64_t seed, int rank) {
  Tensor x({tokens, hidden});
  std::mt19937_64 rng(seed * 7919 + static_cast<uint64_t>(rank));
  std::uniform_real_distribution<float> value(-1, 1);
  for (float& v : x.values) v = value(rng);
  return x;
}

// One dispatch path's repetition: after a barrier, Dispatch; the received
// rows copied where the experts write their output (not timed); a barrier
// (every rank's experts are done: combine is timed on its own); Combine.
struct Contender {
  Contender(ep::Dispatcher d, int64_t tokens, int64_t hidden) : dispatcher(std::move(d)), y({tokens, hidden}) {}
  ep::Dispatcher dispatcher;
  ep::DispatchResult received;
  Tensor y;
  int64_t combine_bytes = 0, combine_internode = 0;

  absl::StatusOr<std::pair<double, double>> Rep(transport::Transport& t, const ep::Placement& placement,
                                                const Tensor& x, const ep::DispatchLayout& layout,
                                                const float* weights, const std::function<Deadline()>& deadline) {
    const int64_t H = x.dim(1);
    std::fill(y.values.begin(), y.values.end(), 0.0f);  // combine adds into y
    MOEX_RETURN_IF_ERROR(t.Barrier(deadline()));
    auto start = Clock::now();
    MOEX_RETURN_IF_ERROR(dispatcher.Dispatch(t, placement, x, layout, weights, deadline(), &received));
    const double dispatch_seconds = SecondsSince(start);
    float* partial = dispatcher.PartialBuffer(received);
    for (int64_t i = 0; i < received.num_recv(); ++i) {
      std::memcpy(partial + i * H, received.recv_rows[i], static_cast<size_t>(H) * sizeof(float));
    }
    MOEX_RETURN_IF_ERROR(t.Barrier(deadline()));
    start = Clock::now();
    MOEX_RETURN_IF_ERROR(dispatcher.Combine(t, received, partial, &y, &combine_bytes, deadline()));
    combine_internode = dispatcher.last_combine_internode_bytes();
    return std::make_pair(dispatch_seconds, SecondsSince(start));
  }
};

// Whole-layer figures: the layer's Forward beside route + experts as it
// measured them + the plain exchanges of its own bytes.
absl::Status RunLayer(transport::Transport& t, const AllToAllVFn& fn, const ep::Placement& placement,
                      const Tensor& x, const RunOptions& options, BenchResult* result) {
  const BenchPoint& p = result->point;
  const int rank = t.rank();
  ep::MoeLayerSpec spec;
  spec.model_type = "mixtral";
  spec.hidden = p.hidden;
  spec.num_experts = p.experts;
  spec.top_k = p.top_k;
  spec.expert_width = p.expert_width;
  spec.router.norm_topk_prob = true;
  std::vector<int64_t> local;
  for (int64_t s = 0; s < placement.num_local_slots(rank); ++s) {
    local.push_back(placement.slot_expert(placement.first_slot(rank) + s));
  }
  MOEX_ASSIGN_OR_RETURN(ep::MoeWeights weights, ep::LoadMoeWeights(spec, nullptr, options.seed, local));
  MOEX_ASSIGN_OR_RETURN(ep::MoeLayer layer, ep::MoeLayer::Create(spec, placement, std::move(weights), t,
                                                                 Deadline::InSeconds(options.rep_timeout_seconds)));

  // The layer routes by its own router: the baseline moves what it moves.
  std::vector<int32_t> topk;
  std::vector<float> topk_weights;
  MOEX_RETURN_IF_ERROR(ep::RouteTokens(spec, layer.weights(), x, {}, &topk, &topk_weights));
  const int64_t T = p.tokens_per_rank;
  ep::DispatchLayout layout = ep::GetDispatchLayout(placement, topk.data(), T, p.top_k, rank * T);
  std::vector<int64_t> recv_rows(static_cast<size_t>(t.world_size()));
  MOEX_RETURN_IF_ERROR(t.ExchangeCounts(layout.num_tokens_per_rank, recv_rows,
                                        Deadline::InSeconds(options.rep_timeout_seconds)));
  Baseline baseline(fn, PlainExchanges(layout.num_tokens_per_rank, recv_rows, rank, p.hidden, p.top_k));

  constexpr size_t kFigures = 4;  // layer, route, experts, route + experts + plain exchanges
  std::vector<double> mine;
  Tensor y;
  for (int rep = 0; rep < options.warmup + options.reps; ++rep) {
    MOEX_RETURN_IF_ERROR(t.Barrier(Deadline::InSeconds(options.rep_timeout_seconds)));
    ep::StepStats stats;
    auto start = Clock::now();
    MOEX_RETURN_IF_ERROR(layer.Forward(t, x, {}, rank * T, Deadline::InSeconds(options.rep_timeout_seconds), &y, &stats));
    double layer_seconds = SecondsSince(start);
    MOEX_RETURN_IF_ERROR(t.Barrier(Deadline::InSeconds(options.rep_timeout_seconds)));
    MOEX_ASSIGN_OR_RETURN(double plain, baseline.Time());
    if (rep < options.warmup) continue;
    mine.insert(mine.end(), {layer_seconds, stats.route_seconds, stats.expert_seconds,
                             stats.route_seconds + stats.expert_seconds + plain});
  }
  MOEX_ASSIGN_OR_RETURN(std::vector<double> slow, Slowest(t, mine, Deadline::InSeconds(options.rep_timeout_seconds)));
  std::vector<double> layer_us = Column(slow, kFigures, 0), base_us = Column(slow, kFigures, 3), ratio;
  for (size_t i = 0; i < layer_us.size(); ++i) ratio.push_back(layer_us[i] / std::max(base_us[i], 1e-9));
  result->layer_us = Summarize(layer_us);
  result->layer_baseline_us = Summarize(base_us);
  result->layer_ratio = Summarize(ratio);
  result->layer_ratio_of_medians = result->layer_us.median / std::max(result->layer_baseline_us.median, 1e-9);
  result->route_us = Summarize(Column(slow, kFigures, 1)).median;
  result->expert_us = Summarize(Column(slow, kFigures, 2)).median;
  return absl::OkStatus();
}

}  // namespace

Stat Summarize(std::vector<double> values) {
  Stat s;
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  auto at = [&](double q) {
    double pos = q * static_cast<double>(values.size() - 1);
    size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
  };
  s.median = at(0.5);
  s.p10 = at(0.1);
  s.p90 = at(0.9);
  s.min = values.front();
  s.max = values.back();
  return s;
}

AllToAllVFn MpiAlltoallv() {
  return [](const std::byte* send, std::span<const int64_t> send_bytes, std::byte* recv,
            std::span<const int64_t> recv_bytes) -> absl::Status {
    const size_t world = send_bytes.size();
    std::vector<int> sc(world), rc(world), sd(world), rd(world);
    int64_t s = 0, r = 0;
    for (size_t i = 0; i < world; ++i) {
      if (s + send_bytes[i] > INT_MAX || r + recv_bytes[i] > INT_MAX) {
        return absl::OutOfRangeError("the MPI_Alltoallv baseline counts bytes in int: a point moves over 2 GiB per rank");
      }
      sc[i] = static_cast<int>(send_bytes[i]);
      rc[i] = static_cast<int>(recv_bytes[i]);
      sd[i] = static_cast<int>(s);
      rd[i] = static_cast<int>(r);
      s += send_bytes[i];
      r += recv_bytes[i];
    }
    int code = MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE,
                             MPI_COMM_WORLD);
    if (code != MPI_SUCCESS) return absl::UnavailableError(StrCat("MPI_Alltoallv failed with code ", code));
    return absl::OkStatus();
  };
}

absl::StatusOr<BenchResult> RunPoint(transport::Transport& t, const AllToAllVFn& fn, BenchPoint point,
                                     const RunOptions& options) {
  MOEX_RETURN_IF_ERROR(ValidatePoint(point));
  if (options.reps < 1 || options.warmup < 0) {
    return absl::InvalidArgumentError(StrCat("bench: reps ", options.reps, " must be >= 1 and warmup ",
                                             options.warmup, " >= 0"));
  }
  const int rank = t.rank(), world = t.world_size();
  point.ranks = world;
  point.transport = std::string(t.name());
  if (point.experts < world) {
    return absl::InvalidArgumentError(StrCat("bench point: ", point.experts, " experts cannot be spread over ", world,
                                             " ranks (each rank holds at least one)"));
  }
  const double weight_bytes = 3.0 * static_cast<double>(point.expert_width * point.hidden) * 4 *
                              std::ceil(static_cast<double>(point.experts) / world);
  if (point.layer && weight_bytes > 16.0 * (1 << 30)) {
    return absl::InvalidArgumentError(StrCat("bench point: the layer's expert weights would take ",
                                             weight_bytes / (1 << 30), " GiB per rank (limit 16)"));
  }
  MOEX_ASSIGN_OR_RETURN(ep::Placement placement, ep::Placement::Contiguous(point.experts, world));
  const int64_t T = point.tokens_per_rank, H = point.hidden, K = point.top_k;
  Tensor x = RandomTokens(T, H, options.seed, rank);
  std::vector<int32_t> topk = SkewedRouting(T, point.experts, K, point.skew, options.seed, rank);
  std::vector<float> weights(static_cast<size_t>(T * K), 1.0f / static_cast<float>(K));
  ep::DispatchLayout layout = ep::GetDispatchLayout(placement, topk.data(), T, K, rank * T);

  BenchResult result;
  result.point = point;
  result.reps = options.reps;
  result.warmup = options.warmup;
  auto deadline = [&] { return Deadline::InSeconds(options.rep_timeout_seconds); };
  // Ours is flat; where the ranks span hosts, the hierarchical path too.
  MOEX_ASSIGN_OR_RETURN(ep::DispatchOptions dispatch_options, ep::DispatchOptions::FromEnvironment());
  dispatch_options.flat = true;
  MOEX_ASSIGN_OR_RETURN(ep::Dispatcher flat_dispatcher, ep::Dispatcher::Create(t, dispatch_options, deadline()));
  std::vector<Contender> contenders;
  contenders.push_back(Contender(std::move(flat_dispatcher), T, H));
  result.hosts = contenders[0].dispatcher.num_hosts();
  if (result.hosts > 1 && dispatch_options.path == ep::DispatchPath::kAuto) {
    // Auto, not flat: hierarchical where it can be set up (every rank
    // alike), else it fell back and is not a contender.
    dispatch_options.flat = false;
    MOEX_ASSIGN_OR_RETURN(ep::Dispatcher hierarchical, ep::Dispatcher::Create(t, dispatch_options, deadline()));
    if (hierarchical.path() == ep::DispatchPathName(ep::DispatchPath::kHierarchical)) {
      contenders.push_back(Contender(std::move(hierarchical), T, H));
      result.has_hierarchical = true;
    }
  }
  std::optional<Baseline> baseline;
  // Per contender: dispatch, combine, dispatch + combine; then the plain
  // exchanges.
  const size_t kFigures = 3 * contenders.size() + 1;
  std::vector<double> mine;
  double faults = 0;  // in the flat contender's counted repetitions
  for (int rep = 0; rep < options.warmup + options.reps; ++rep) {
    std::vector<double> row;
    for (Contender& c : contenders) {
      const double faults_before = MinorFaults();
      MOEX_ASSIGN_OR_RETURN(auto seconds, c.Rep(t, placement, x, layout, weights.data(), deadline));
      if (&c == &contenders[0] && rep >= options.warmup) faults += MinorFaults() - faults_before;
      row.insert(row.end(), {seconds.first, seconds.second, seconds.first + seconds.second});
    }
    const ep::DispatchResult& flat = contenders[0].received;
    if (!baseline) baseline.emplace(fn, PlainExchanges(flat.send_tokens, flat.recv_tokens, rank, H, K));
    MOEX_RETURN_IF_ERROR(t.Barrier(deadline()));
    MOEX_ASSIGN_OR_RETURN(double plain, baseline->Time());
    row.push_back(plain);
    if (rep >= options.warmup) mine.insert(mine.end(), row.begin(), row.end());
  }
  const ep::DispatchResult& received = contenders[0].received;
  const int64_t dispatch_bytes = received.bytes_sent, combine_bytes = contenders[0].combine_bytes;
  result.path = std::string(contenders[0].dispatcher.path());
  MOEX_ASSIGN_OR_RETURN(std::vector<double> slow, Slowest(t, mine, deadline()));
  const size_t kPlain = kFigures - 1;
  std::vector<double> ours = Column(slow, kFigures, 2), plain = Column(slow, kFigures, kPlain), ratio;
  // One rank moves nothing between ranks: no ratio to report.
  for (size_t i = 0; i < ours.size() && world > 1; ++i) ratio.push_back(ours[i] / std::max(plain[i], 1e-9));
  result.dispatch_us = Summarize(Column(slow, kFigures, 0));
  result.combine_us = Summarize(Column(slow, kFigures, 1));
  result.ours_us = Summarize(ours);
  result.baseline_us = Summarize(plain);
  result.ratio = Summarize(ratio);
  if (world > 1) result.ratio_of_medians = result.ours_us.median / std::max(result.baseline_us.median, 1e-9);
  if (result.has_hierarchical) {
    std::vector<double> hier = Column(slow, kFigures, 5), vs_flat, vs_plain;
    for (size_t i = 0; i < hier.size(); ++i) {
      vs_flat.push_back(hier[i] / std::max(ours[i], 1e-9));
      vs_plain.push_back(hier[i] / std::max(plain[i], 1e-9));
    }
    result.hier_dispatch_us = Summarize(Column(slow, kFigures, 3));
    result.hier_combine_us = Summarize(Column(slow, kFigures, 4));
    result.hier_us = Summarize(hier);
    result.hier_vs_flat = Summarize(vs_flat);
    result.hier_vs_baseline = Summarize(vs_plain);
    result.hier_vs_flat_of_medians = result.hier_us.median / std::max(result.ours_us.median, 1e-9);
    result.hier_vs_baseline_of_medians = result.hier_us.median / std::max(result.baseline_us.median, 1e-9);
  }

  // Bytes per rank (mean over ranks) and the floor: each token's distinct
  // remote destination ranks x hidden x 4 bytes.
  int64_t remote_copies = 0, received_tokens = 0;
  for (int r = 0; r < world; ++r) {
    if (r != rank) remote_copies += layout.num_tokens_per_rank[r];
    received_tokens += received.recv_tokens[r];
  }
  const Contender& hier = contenders.back();
  std::vector<double> sums = {static_cast<double>(dispatch_bytes), static_cast<double>(combine_bytes),
                              static_cast<double>(remote_copies) * static_cast<double>(H) * 4,
                              static_cast<double>(received.internode_bytes_sent + contenders[0].combine_internode),
                              static_cast<double>(received.internode_floor_bytes),
                              static_cast<double>(hier.received.internode_bytes_sent + hier.combine_internode)};
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<double>(sums), deadline()));
  result.dispatch_bytes_per_rank = sums[0] / world;
  result.combine_bytes_per_rank = sums[1] / world;
  result.floor_bytes_per_rank = sums[2] / world;
  result.internode_bytes_per_rank = sums[3] / world;
  result.internode_floor_bytes_per_rank = sums[4] / world;
  if (result.has_hierarchical) result.hier_internode_bytes_per_rank = sums[5] / world;
  auto gbps = [](double bytes, double us) { return us > 0 ? bytes / (us * 1e3) : 0.0; };
  result.dispatch_gbps = gbps(result.dispatch_bytes_per_rank, result.dispatch_us.median);
  result.combine_gbps = gbps(result.combine_bytes_per_rank, result.combine_us.median);
  result.baseline_gbps = gbps(result.dispatch_bytes_per_rank + result.combine_bytes_per_rank, result.baseline_us.median);
  std::vector<double> all_faults(static_cast<size_t>(world));
  const double my_faults = faults / options.reps;
  MOEX_RETURN_IF_ERROR(t.AllGather(std::span<const double>(&my_faults, 1), all_faults, deadline()));
  result.minor_faults_per_rep = *std::max_element(all_faults.begin(), all_faults.end());
  std::vector<double> loads(static_cast<size_t>(world));
  const double own_load = static_cast<double>(received_tokens);
  MOEX_RETURN_IF_ERROR(t.AllGather(std::span<const double>(&own_load, 1), loads, deadline()));
  const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / world;
  result.rank_imbalance = mean > 0 ? *std::max_element(loads.begin(), loads.end()) / mean : 1.0;

  if (point.layer) MOEX_RETURN_IF_ERROR(RunLayer(t, fn, placement, x, options, &result));
  return result;
}

}  // namespace moex::bench
