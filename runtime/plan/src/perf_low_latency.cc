// The low-latency mode of `moex plan --perf`: DeepEP's low-latency kernels
// (deepseek-ai/DeepEP csrc/kernels/internode_ll.cu, as first published,
// commit ebfe47e4) and kernels built like them (NCCL EP's LL mode).
//
// What those kernels do, and so what is modelled:
// - Dispatch sends one message per (token, destination expert), not per
//   destination rank: a token with two experts on one rank crosses twice.
//   A message is the token in the dispatch dtype, its scales (FP8: one fp32
//   per 128 values) and a 16-byte header (the source index). Messages to
//   the own rank are copied locally; all others go through the NIC
//   (IBGDA puts), same-node ones included, or over NVLink for same-node
//   ones in DeepEP since its PR #173 and in NCCL EP (--ll-intranode nvlink).
// - Combine sends each (token, expert) output back, hidden x 2 bytes (BF16).
// - Every receiver waits for a count (dispatch) or flag (combine) from every
//   sender: the phase ends when the busiest endpoint has moved its messages
//   and the last flag has crossed the network once.
// - Buffers are fixed-size: a receive slot for every (expert, source rank,
//   token) whatever the routing, so memory is experts x tokens_per_rank x
//   message, independent of EP (LowLatencyLayout in csrc/config.hpp).
//
//   phase = sync latency + hot messages x per-message cost
//           + max(hot NIC messages x message bytes / (NIC x ll_efficiency),
//                 hot NVLink messages x message bytes / (NVLink x ll_nvlink_efficiency))
//
// "Hot": the endpoint (rank, as sender or receiver) with the most messages
// on that link in one batch of ep x tokens_per_rank routed tokens, averaged
// over several batches: at 128 tokens a rank the receivers' counts vary
// by several percent, and the slowest one bounds the step.
#include "perf_low_latency.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "moex/core/str_cat.h"

namespace moex::plan::internal {
namespace {

// Above this, a rank's fixed buffers are many GiB and the normal kernels
// are the ones to use; it also bounds the batches sampled below.
constexpr int64_t kMaxLowLatencyTokens = 4096;

// Picks `count` distinct indices with positive weight, as successive draws
// proportional to weight without replacement would (Efraimidis-Spirakis:
// the largest log(u) / w), into `out`.
void WeightedSample(const std::vector<double>& weight, int64_t count, std::mt19937_64& rng,
                    std::vector<std::pair<double, int64_t>>& keys, std::vector<int64_t>& out) {
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  keys.clear();
  for (size_t i = 0; i < weight.size(); ++i) {
    if (!(weight[i] > 0)) continue;
    double u = 1.0 - uniform(rng);  // (0, 1]
    keys.emplace_back(std::log(u) / weight[i], static_cast<int64_t>(i));
  }
  const size_t n = std::min(keys.size(), static_cast<size_t>(count));
  std::partial_sort(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(n), keys.end(),
                    [](const auto& a, const auto& b) { return a.first > b.first; });
  out.clear();
  for (size_t i = 0; i < n; ++i) out.push_back(keys[i].second);
}

struct BatchCounts {
  double hot_network = 0, hot_nvlink = 0, hot_messages = 0;  // per endpoint, sent or received
  double hot_pairs = 0, mean_pairs = 0;                      // routed pairs a rank receives (its own included)
  double messages = 0;                                       // sent by a rank, its own rank's included
  double network = 0, nvlink = 0;                            // sent by the mean rank on each link
};

// Routes `trials` batches of ep x T tokens and counts, per rank, the
// messages it sends and receives on each link.
BatchCounts RouteBatches(const LowLatencyInputs& in) {
  const std::vector<double>& popularity = *in.popularity;
  const int64_t E = static_cast<int64_t>(popularity.size()), ep = in.ep, T = in.tokens_per_rank;
  const int64_t group_size = E / in.groups;
  std::vector<double> group_weight(in.groups, 0.0);
  for (int64_t e = 0; e < E; ++e) group_weight[e / group_size] += popularity[e];
  // Enough batches that the average hottest count settles (~64k tokens).
  const int64_t trials = std::clamp<int64_t>(65536 / std::max<int64_t>(1, ep * T), 2, 32);
  std::mt19937_64 rng(in.seed);
  std::vector<std::pair<double, int64_t>> keys;
  std::vector<int64_t> chosen_groups, experts;
  std::vector<double> allowed(E);
  BatchCounts b;
  for (int64_t trial = 0; trial < trials; ++trial) {
    std::vector<double> sent_net(ep, 0), sent_nvl(ep, 0), recv_net(ep, 0), recv_nvl(ep, 0), pairs(ep, 0);
    double messages = 0;
    for (int64_t src = 0; src < ep; ++src) {
      for (int64_t t = 0; t < T; ++t) {
        if (in.topk_groups < in.groups) {
          WeightedSample(group_weight, in.topk_groups, rng, keys, chosen_groups);
          std::fill(allowed.begin(), allowed.end(), 0.0);
          for (int64_t g : chosen_groups) {
            for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) allowed[e] = popularity[e];
          }
          WeightedSample(allowed, in.top_k, rng, keys, experts);
        } else {
          WeightedSample(popularity, in.top_k, rng, keys, experts);
        }
        for (int64_t e : experts) {
          const int64_t dst = e * ep / E;
          pairs[dst] += 1;
          messages += 1;
          if (dst == src) continue;  // a local copy, no link
          const bool nvlink = in.intranode == "nvlink" && dst / in.gpus_per_node == src / in.gpus_per_node;
          (nvlink ? sent_nvl : sent_net)[src] += 1;
          (nvlink ? recv_nvl : recv_net)[dst] += 1;
        }
      }
    }
    double hot_net = 0, hot_nvl = 0, hot_all = 0, hot_pairs = 0;
    for (int64_t r = 0; r < ep; ++r) {
      hot_net = std::max({hot_net, sent_net[r], recv_net[r]});
      hot_nvl = std::max({hot_nvl, sent_nvl[r], recv_nvl[r]});
      hot_all = std::max({hot_all, sent_net[r] + sent_nvl[r], recv_net[r] + recv_nvl[r]});
      hot_pairs = std::max(hot_pairs, pairs[r]);
    }
    b.hot_network += hot_net;
    b.hot_nvlink += hot_nvl;
    b.hot_messages += hot_all;
    b.hot_pairs += hot_pairs;
    b.mean_pairs += messages / static_cast<double>(ep);
    b.messages += messages / static_cast<double>(ep);
    for (int64_t r = 0; r < ep; ++r) {
      b.network += sent_net[r] / static_cast<double>(ep);
      b.nvlink += sent_nvl[r] / static_cast<double>(ep);
    }
  }
  const double n = static_cast<double>(trials);
  b.hot_network /= n, b.hot_nvlink /= n, b.hot_messages /= n, b.hot_pairs /= n, b.mean_pairs /= n, b.messages /= n;
  b.network /= n, b.nvlink /= n;
  return b;
}

}  // namespace

absl::Status CheckLowLatencyOptions(const PerfOptions& o) {
  if (o.mode != "normal" && o.mode != "low-latency") {
    return absl::InvalidArgumentError(StrCat("--mode '", o.mode, "' is not one of normal, low-latency"));
  }
  if (o.ll_intranode != "rdma" && o.ll_intranode != "nvlink") {
    return absl::InvalidArgumentError(StrCat("--ll-intranode '", o.ll_intranode, "' is not one of rdma, nvlink"));
  }
  if (o.mode != "low-latency") return absl::OkStatus();
  // The low-latency kernels cast to FP8 or send BF16, and combine in BF16
  // (DeepEP's low_latency_dispatch/combine; NCCL EP's LL mode).
  if (o.dispatch_dtype != "fp8" && o.dispatch_dtype != "bf16") {
    return absl::InvalidArgumentError(StrCat("--dispatch-dtype '", o.dispatch_dtype,
                                             "' is not one of fp8, bf16 in --mode low-latency"));
  }
  if (o.combine_dtype != "bf16") {
    return absl::InvalidArgumentError(StrCat("--combine-dtype '", o.combine_dtype,
                                             "' is not bf16, the low-latency kernels' combine dtype (--mode low-latency)"));
  }
  if (o.tokens_per_rank > kMaxLowLatencyTokens) {
    return absl::InvalidArgumentError(StrCat("--tokens-per-rank ", o.tokens_per_rank, " is above ", kMaxLowLatencyTokens,
                                             " in --mode low-latency (its fixed buffers hold experts x tokens slots a "
                                             "rank; large batches are --mode normal's)"));
  }
  return absl::OkStatus();
}

void ModelLowLatency(const LowLatencyInputs& in, EpPerf* p) {
  const ClusterProfile& c = *in.cluster;
  const double H = static_cast<double>(in.hidden), T = static_cast<double>(in.tokens_per_rank);
  const double E = static_cast<double>(in.popularity->size());
  // Messages as internode_ll.cu builds them: FP8 = hidden bytes + one fp32
  // scale per 128 + an int4 header; BF16 = the header + hidden x 2. Combine
  // puts hidden x 2 (its header slot is not sent).
  const double dispatch_msg = (in.dispatch_dtype == "fp8" ? H + H / 128.0 * 4.0 : 2.0 * H) + 16.0;
  const double combine_msg = 2.0 * H;
  const BatchCounts b = RouteBatches(in);

  // The flag or count that ends each phase crosses the network once (NVLink
  // when a single node's ranks all use it).
  const bool network = in.intranode == "rdma" || p->nodes > 1;
  const double sync_us = network ? c.nic_latency_us : c.nvlink_latency_us;
  auto phase_us = [&](double msg_bytes) {
    const double net = b.hot_network * msg_bytes / (c.nic_gbps * 1e9 * c.ll_efficiency);
    const double nvl = b.hot_nvlink * msg_bytes / (c.nvlink_gbps * 1e9 * c.ll_nvlink_efficiency);
    return sync_us + b.hot_messages * c.ll_message_us + 1e6 * std::max(net, nvl);
  };
  p->dispatch_us = phase_us(dispatch_msg);
  p->combine_us = phase_us(combine_msg);
  p->rank_imbalance = b.mean_pairs > 0 ? b.hot_pairs / b.mean_pairs : 1.0;

  // What leaves a rank for others (moex's convention): every message but
  // the own rank's, the mean rank's, by link.
  p->dispatch_network_bytes_per_rank = b.network * dispatch_msg;
  p->dispatch_nvlink_bytes_per_rank = b.nvlink * dispatch_msg;
  p->dispatch_bytes_per_rank = (b.network + b.nvlink) * dispatch_msg;
  p->combine_bytes_per_rank = (b.network + b.nvlink) * combine_msg;
  p->dispatch_gbps = p->dispatch_us > 0 ? p->dispatch_bytes_per_rank / p->dispatch_us / 1e3 : 0;
  p->combine_gbps = p->combine_us > 0 ? p->combine_bytes_per_rank / p->combine_us / 1e3 : 0;
  // DeepEP's tests/test_low_latency.py: every selected (token, expert), the
  // own rank's included, at hidden + hidden/128 x 4 + 16 (FP8) and hidden x 2
  // (BF16) bytes; the "RDMA bandwidth" of its README is these over the time.
  p->deepep_dispatch_bytes_per_rank = b.messages * dispatch_msg;
  p->deepep_combine_bytes_per_rank = b.messages * combine_msg;
  p->deepep_dispatch_gbps = p->dispatch_us > 0 ? p->deepep_dispatch_bytes_per_rank / p->dispatch_us / 1e3 : 0;
  p->deepep_combine_gbps = p->combine_us > 0 ? p->deepep_combine_bytes_per_rank / p->combine_us / 1e3 : 0;

  p->ll_messages_per_rank = b.messages;
  p->ll_hot_network_messages = b.hot_network;
  p->ll_hot_nvlink_messages = b.hot_nvlink;
  p->ll_dispatch_message_bytes = dispatch_msg;
  p->ll_combine_message_bytes = combine_msg;
  p->ll_sync_us = sync_us;
  // DeepEP's LowLatencyLayout (csrc/config.hpp): odd/even send and receive
  // buffers, each sized for the larger of dispatch and combine: a slot per
  // (expert, token) at the combine message (int4 header + BF16 token), and
  // the signalling words.
  const double combine_slot = 16.0 + 2.0 * H;
  const double send = std::max(T * (H + H / 128.0 * 4.0 + 16.0), E * T * combine_slot);
  const double recv = std::max(E * T * (H + H / 128.0 * 4.0 + 16.0), E * T * combine_slot);
  const double signalling = (E + E / static_cast<double>(in.ep)) * 4.0;
  p->ll_buffer_bytes_per_rank = 2.0 * (send + recv + signalling);
}

}  // namespace moex::plan::internal
