#include "moex/plan/perf_model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/config_view.h"
#include "perf_low_latency.h"

namespace moex::plan {
namespace {

// Published per-GPU figures. NVLink: the bidirectional figure halved; NIC:
// the GPU's own ConnectX (400 Gb/s = 50 GB/s); FLOP/s: dense, no sparsity.
ClusterProfile H100() {
  return {.name = "h100", .source = "NVIDIA H100 SXM5 datasheet: NVLink 4 900 GB/s, 989 TFLOP/s bf16, 1979 fp8, "
                                    "HBM3 3.35 TB/s, 80 GB; ConnectX-7 400 Gb/s per GPU",
          .gpus_per_node = 8, .nvlink_gbps = 450, .nvlink_latency_us = 3, .nic_gbps = 50, .nic_latency_us = 5,
          .bf16_tflops = 989, .fp8_tflops = 1979, .hbm_tbps = 3.35, .gpu_mem_gib = 80};
}

}  // namespace

absl::StatusOr<ClusterProfile> BuiltinProfile(const std::string& name) {
  ClusterProfile p = H100();
  if (name == "h100") return p;
  if (name == "h800") {
    p.name = "h800";
    p.source = "NVIDIA H800 SXM5 (export variant): NVLink 400 GB/s, compute and HBM as H100; DeepSeek-V3 report: "
               "400 Gb/s InfiniBand per GPU";
    p.nvlink_gbps = 200;
    return p;
  }
  if (name == "h200") {
    p.name = "h200";
    p.source = "NVIDIA H200 SXM datasheet: NVLink 4 900 GB/s, 989 TFLOP/s bf16, 1979 fp8, HBM3e 4.8 TB/s, 141 GB";
    p.hbm_tbps = 4.8;
    p.gpu_mem_gib = 141;
    return p;
  }
  if (name == "b200") {
    p.name = "b200";
    p.source = "NVIDIA DGX B200: NVLink 5 1.8 TB/s, 2.25 PFLOP/s bf16, 4.5 fp8 (dense), HBM3e 8 TB/s, 180 GB; "
               "ConnectX-7 400 Gb/s per GPU";
    p.nvlink_gbps = 900;
    p.bf16_tflops = 2250;
    p.fp8_tflops = 4500;
    p.hbm_tbps = 8;
    p.gpu_mem_gib = 180;
    return p;
  }
  return absl::NotFoundError(StrCat("no cluster profile '", name, "'; built in: h100, h800, h200, b200, or a JSON file"));
}

absl::StatusOr<ClusterProfile> LoadProfile(const std::string& name_or_file) {
  if (name_or_file.find('/') == std::string::npos && name_or_file.find(".json") == std::string::npos) {
    return BuiltinProfile(name_or_file);
  }
  MOEX_ASSIGN_OR_RETURN(nlohmann::json j, model::ReadJsonFile(name_or_file));
  if (!j.is_object()) return absl::InvalidArgumentError(StrCat(name_or_file, ": a cluster profile is a JSON object"));
  ClusterProfile p = H100();
  p.name = name_or_file;
  p.source = name_or_file;
  struct Field {
    const char* key;
    double* value;
    double lo, hi;
  };
  double gpn = static_cast<double>(p.gpus_per_node);
  const Field fields[] = {{"gpus_per_node", &gpn, 1, 1024},
                          {"nvlink_gbps", &p.nvlink_gbps, 0.001, 1e5},
                          {"nvlink_latency_us", &p.nvlink_latency_us, 0, 1e6},
                          {"nic_gbps", &p.nic_gbps, 0.001, 1e5},
                          {"nic_latency_us", &p.nic_latency_us, 0, 1e6},
                          {"bf16_tflops", &p.bf16_tflops, 0.001, 1e6},
                          {"fp8_tflops", &p.fp8_tflops, 0.001, 1e6},
                          {"fp32_tflops", &p.fp32_tflops, 0.001, 1e6},
                          {"hbm_tbps", &p.hbm_tbps, 0.001, 1e4},
                          {"gpu_mem_gib", &p.gpu_mem_gib, 0.001, 1e6},
                          {"gemm_efficiency", &p.gemm_efficiency, 0.001, 1},
                          {"link_efficiency", &p.link_efficiency, 0.001, 1},
                          {"ll_efficiency", &p.ll_efficiency, 0.001, 1},
                          {"ll_nvlink_efficiency", &p.ll_nvlink_efficiency, 0.001, 1},
                          {"ll_message_us", &p.ll_message_us, 0, 1e6}};
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "name" || it.key() == "source" || it.key() == "provenance") continue;
    const Field* f = nullptr;
    for (const Field& candidate : fields) {
      if (it.key() == candidate.key) f = &candidate;
    }
    if (f == nullptr) return absl::InvalidArgumentError(StrCat(name_or_file, ": unknown field '", it.key(), "'"));
    if (!it.value().is_number() || it.value().get<double>() < f->lo || it.value().get<double>() > f->hi) {
      return absl::InvalidArgumentError(StrCat(name_or_file, ": field '", it.key(), "' must be a number in [", f->lo,
                                               ", ", f->hi, "]"));
    }
    *f->value = it.value().get<double>();
  }
  p.gpus_per_node = static_cast<int64_t>(gpn);
  if (j.contains("name") && j["name"].is_string()) p.name = j["name"].get<std::string>();
  return p;
}

namespace {

double DtypeBytes(const std::string& dtype, int64_t hidden) {
  if (dtype == "fp8") return 1.0 + 4.0 / 128.0;  // one fp32 scale per 128 values
  if (dtype == "bf16") return 2.0;
  if (dtype == "fp32") return 4.0;
  (void)hidden;
  return 0;
}

struct FanOut {
  double ranks = 0, nodes = 0, local_ranks = 0;  // per token, self/own node included when chosen
  double self = 0, own_node = 0;                 // how often the own rank / node is among them
  double imbalance = 1;                           // hottest rank's pairs / mean
};

// Samples tokens' routing: `k` distinct experts, from `topk_groups` groups
// when the router is group-limited, each expert drawn by popularity.
FanOut SampleFanOut(const std::vector<double>& popularity, int64_t k, int64_t groups, int64_t topk_groups, int64_t ep,
                    int64_t gpn, int64_t samples, uint64_t seed) {
  const int64_t E = static_cast<int64_t>(popularity.size());
  std::mt19937_64 rng(seed);
  std::vector<double> pairs(ep, 0.0);
  FanOut f;
  const int64_t group_size = E / groups;
  std::vector<double> group_weight(groups, 0.0);
  for (int64_t e = 0; e < E; ++e) group_weight[e / group_size] += popularity[e];
  const int64_t sampler_rank = 0;  // the token's home: rank 0 (the placement is symmetric)
  for (int64_t t = 0; t < samples; ++t) {
    // Groups, by their total popularity, without replacement.
    std::vector<double> gw = group_weight;
    std::vector<char> allowed(groups, topk_groups >= groups ? 1 : 0);
    if (topk_groups < groups) {
      for (int64_t g = 0; g < topk_groups; ++g) {
        std::discrete_distribution<int64_t> pick(gw.begin(), gw.end());
        int64_t chosen = pick(rng);
        allowed[chosen] = 1;
        gw[chosen] = 0;
      }
    }
    std::vector<double> w(E);
    for (int64_t e = 0; e < E; ++e) w[e] = allowed[e / group_size] ? popularity[e] : 0.0;
    std::set<int64_t> ranks, nodes;
    int64_t local = 0;
    for (int64_t j = 0; j < k; ++j) {
      std::discrete_distribution<int64_t> pick(w.begin(), w.end());
      int64_t e = pick(rng);
      w[e] = 0;
      int64_t rank = e * ep / E;
      pairs[rank] += 1;
      if (ranks.insert(rank).second && rank / gpn == sampler_rank / gpn) ++local;
      nodes.insert(rank / gpn);
    }
    f.ranks += static_cast<double>(ranks.size());
    f.nodes += static_cast<double>(nodes.size());
    f.self += ranks.count(sampler_rank) ? 1.0 : 0.0;
    f.own_node += nodes.count(sampler_rank / gpn) ? 1.0 : 0.0;
    f.local_ranks += static_cast<double>(local);
  }
  f.ranks /= static_cast<double>(samples);
  f.nodes /= static_cast<double>(samples);
  f.local_ranks /= static_cast<double>(samples);
  f.self /= static_cast<double>(samples);
  f.own_node /= static_cast<double>(samples);
  double total = 0, most = 0;
  for (double p : pairs) total += p, most = std::max(most, p);
  f.imbalance = total > 0 ? most * static_cast<double>(ep) / total : 1.0;
  return f;
}

}  // namespace

absl::StatusOr<PerfReport> ModelPerf(const model::ModelArch& arch, const PerfOptions& o) {
  const model::LayerSpec* moe = nullptr;
  int64_t moe_layers = 0;
  for (const model::LayerSpec& layer : arch.layers) {
    if (layer.ffn != model::FfnKind::kMoe) continue;
    if (moe == nullptr) moe = &layer;
    ++moe_layers;
  }
  if (moe == nullptr) return absl::InvalidArgumentError(StrCat(arch.source, " has no MoE layer: --perf models expert parallelism"));
  const int64_t E = moe->moe.num_experts, k = moe->moe.experts_per_token, H = arch.hidden_size;
  const int64_t F = moe->moe.expert_intermediate_size, Fs = moe->moe.shared_intermediate_size;
  const ClusterProfile& c = o.cluster;
  if (o.tokens_per_rank < 1 || o.tokens_per_rank > (1 << 24)) {
    return absl::InvalidArgumentError(StrCat("--tokens-per-rank ", o.tokens_per_rank, " is outside [1, 2^24]"));
  }
  const double db = DtypeBytes(o.dispatch_dtype, H), cb = DtypeBytes(o.combine_dtype, H);
  if (db == 0) return absl::InvalidArgumentError(StrCat("--dispatch-dtype '", o.dispatch_dtype, "' is not one of fp8, bf16, fp32"));
  if (cb == 0 || o.combine_dtype == "fp8") return absl::InvalidArgumentError(StrCat("--combine-dtype '", o.combine_dtype, "' is not one of bf16, fp32"));
  if (DtypeBytes(o.expert_dtype, H) == 0) {
    return absl::InvalidArgumentError(StrCat("--expert-dtype '", o.expert_dtype, "' is not one of fp8, bf16, fp32"));
  }
  if (o.expert_dtype == "fp32" && !(c.fp32_tflops > 0)) {
    return absl::InvalidArgumentError(StrCat("cluster profile '", c.name, "' has no fp32_tflops (the built-in profiles "
                                             "give tensor-core rates only): give one in a profile file, e.g. from "
                                             "`moex bench calibrate`"));
  }
  MOEX_RETURN_IF_ERROR(internal::CheckLowLatencyOptions(o));
  const bool low_latency = o.mode == "low-latency";
  if (!(o.routing_skew >= 0 && o.routing_skew <= 10)) return absl::InvalidArgumentError("--routing-skew must be in [0, 10]");
  std::vector<double> popularity(E);
  if (!o.load.empty()) {
    if (static_cast<int64_t>(o.load.size()) != E) {
      return absl::InvalidArgumentError(StrCat("the load has ", o.load.size(), " experts, the model ", E));
    }
    popularity = o.load;
  } else {
    // Zipf over a seeded order of the experts.
    std::vector<int64_t> order(E);
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::shuffle(order.begin(), order.end(), std::mt19937_64(o.seed));
    for (int64_t i = 0; i < E; ++i) popularity[order[i]] = std::pow(static_cast<double>(i + 1), -o.routing_skew);
  }
  double popular_total = 0;
  for (double p : popularity) popular_total += p;
  if (!(popular_total > 0)) return absl::InvalidArgumentError("the load is zero everywhere");

  PerfReport r;
  r.cluster = c.name;
  r.mode = o.mode;
  if (low_latency) r.ll_intranode = o.ll_intranode;
  r.tokens_per_rank = o.tokens_per_rank;
  r.moe_layers = moe_layers;
  r.hidden = H, r.experts = E, r.top_k = k, r.expert_width = F, r.shared_width = Fs;
  const int64_t groups = arch.router.num_groups > 1 && E % arch.router.num_groups == 0 ? arch.router.num_groups : 1;
  const int64_t topk_groups = groups > 1 ? arch.router.topk_groups : 1;
  const double T = static_cast<double>(o.tokens_per_rank);
  const double tflops = o.expert_dtype == "fp8" ? c.fp8_tflops : o.expert_dtype == "bf16" ? c.bf16_tflops : c.fp32_tflops;
  const double peak = tflops * 1e12 * c.gemm_efficiency;
  const double wbytes = o.expert_dtype == "fp8" ? 1.0 : o.expert_dtype == "bf16" ? 2.0 : 4.0;
  for (int64_t ep : o.ep_sizes) {
    if (ep < 1 || ep > 65536) return absl::InvalidArgumentError(StrCat("--ep size ", ep, " is outside [1, 65536]"));
    if (ep > E) {
      r.notes.push_back(StrCat("EP ", ep, " skipped: more ranks than the ", E, " experts"));
      continue;
    }
    EpPerf p;
    p.ep = ep;
    const int64_t gpn = std::min(c.gpus_per_node, ep);
    p.nodes = (ep + gpn - 1) / gpn;
    p.experts_per_rank = static_cast<double>(E) / static_cast<double>(ep);
    FanOut f = SampleFanOut(popularity, k, groups, topk_groups, ep, gpn, o.samples, o.seed + static_cast<uint64_t>(ep));
    p.ranks_per_token = f.ranks;
    p.nodes_per_token = f.nodes;
    p.rank_imbalance = f.imbalance;
    // Leaving one rank: once per remote node over the network, then NVLink
    // forwarding there (counted where it happens: symmetric, so as much as
    // this rank forwards for others); NVLink directly to own-node ranks.
    // A token's visit to its own rank or node moves nothing: only the
    // destinations other than its own count (the own one is among them only
    // when one of its experts lives there).
    const double remote_nodes = std::max(0.0, f.nodes - f.own_node);
    const double local_remote_ranks = std::max(0.0, f.local_ranks - f.self);
    const double remote_node_ranks = std::max(0.0, f.ranks - f.local_ranks);
    const double forwarded = std::max(0.0, remote_node_ranks - remote_nodes);
    auto traffic = [&](double bytes_per_value, double* network, double* nvlink) {
      *network = T * remote_nodes * H * bytes_per_value;
      *nvlink = T * (local_remote_ranks + forwarded) * H * bytes_per_value;
    };
    double net = 0, nv = 0;
    traffic(db, &net, &nv);
    p.dispatch_network_bytes_per_rank = net;
    p.dispatch_nvlink_bytes_per_rank = nv;
    p.dispatch_bytes_per_rank = net + nv;
    auto seconds = [&](double network, double nvlink) {
      // The hottest receiver takes `imbalance` times the mean; it bounds the
      // exchange as much as the senders do.
      double scale = std::max(1.0, f.imbalance);
      double t_net = network * scale / (c.nic_gbps * 1e9 * c.link_efficiency);
      double t_nv = nvlink * scale / (c.nvlink_gbps * 1e9 * c.link_efficiency);
      double latency = (p.nodes > 1 ? c.nic_latency_us : c.nvlink_latency_us) * 1e-6;
      return std::max(t_net, t_nv) + (network + nvlink > 0 ? latency : 0.0);
    };
    p.dispatch_us = 1e6 * seconds(net, nv);
    double cnet = 0, cnv = 0;
    traffic(cb, &cnet, &cnv);
    p.combine_bytes_per_rank = cnet + cnv;
    p.combine_us = 1e6 * seconds(cnet, cnv);
    // Experts on the hottest rank: its routed pairs, plus the shared expert
    // on its own tokens; or reading its experts' weights, if that is longer.
    const double pairs = T * static_cast<double>(k) * f.imbalance;
    const double flops = pairs * 6.0 * H * F + T * 6.0 * H * Fs;
    const double compute = flops / peak;
    const double memory = (p.experts_per_rank * 3.0 * H * F + 3.0 * H * Fs) * wbytes / (c.hbm_tbps * 1e12);
    p.expert_us = 1e6 * std::max(compute, memory);
    p.expert_bound = compute >= memory ? "compute" : "memory";
    p.expert_tflops = flops / std::max(compute, memory) / 1e12;
    p.layer_us = p.dispatch_us + p.expert_us + p.combine_us;
    p.dispatch_gbps = p.dispatch_us > 0 ? p.dispatch_bytes_per_rank / p.dispatch_us / 1e3 : 0;
    p.combine_gbps = p.combine_us > 0 ? p.combine_bytes_per_rank / p.combine_us / 1e3 : 0;
    p.comm_fraction = p.layer_us > 0 ? (p.dispatch_us + p.combine_us) / p.layer_us : 0;
    // DeepEP's convention (perf_model.h): the own rank's (node's) copies
    // count too, over the same times.
    const double deepep_copies = p.nodes > 1 ? f.nodes : f.ranks;
    p.deepep_dispatch_bytes_per_rank = T * deepep_copies * H * db;
    p.deepep_combine_bytes_per_rank = T * deepep_copies * H * cb;
    p.deepep_dispatch_gbps = p.dispatch_us > 0 ? p.deepep_dispatch_bytes_per_rank / p.dispatch_us / 1e3 : 0;
    p.deepep_combine_gbps = p.combine_us > 0 ? p.deepep_combine_bytes_per_rank / p.combine_us / 1e3 : 0;
    if (low_latency) {
      // The low-latency kernels' path replaces the communication figures;
      // the experts see the batch's own hottest rank.
      internal::LowLatencyInputs in{.popularity = &popularity, .top_k = k, .groups = groups,
                                    .topk_groups = topk_groups, .ep = ep, .gpus_per_node = gpn,
                                    .tokens_per_rank = o.tokens_per_rank, .hidden = H,
                                    .dispatch_dtype = o.dispatch_dtype, .combine_dtype = o.combine_dtype,
                                    .intranode = o.ll_intranode, .cluster = &c,
                                    .seed = o.seed + 7919 * static_cast<uint64_t>(ep)};
      internal::ModelLowLatency(in, &p);
      const double ll_pairs = T * static_cast<double>(k) * p.rank_imbalance;
      const double ll_flops = ll_pairs * 6.0 * H * F + T * 6.0 * H * Fs;
      const double ll_compute = ll_flops / peak;
      p.expert_us = 1e6 * std::max(ll_compute, memory);
      p.expert_bound = ll_compute >= memory ? "compute" : "memory";
      p.expert_tflops = ll_flops / std::max(ll_compute, memory) / 1e12;
      p.layer_us = p.dispatch_us + p.expert_us + p.combine_us;
      p.comm_fraction = p.layer_us > 0 ? (p.dispatch_us + p.combine_us) / p.layer_us : 0;
    }
    r.ep.push_back(p);
  }
  if (low_latency) {
    r.notes.push_back(StrCat("low-latency mode: one message per (token, expert), same-node ones over ",
                             o.ll_intranode == "rdma" ? "the NIC (DeepEP's kernels as first published)"
                                                      : "NVLink (DeepEP since PR #173, NCCL EP)",
                             "; NIC efficiency ", c.ll_efficiency, ", NVLink ", c.ll_nvlink_efficiency,
                             " (the built-in ones fitted on one DeepEP H800 point each, docs/plan.md), per message ",
                             c.ll_message_us, " us; the buffers are fixed at --tokens-per-rank slots; GEMM efficiency ",
                             c.gemm_efficiency, " (an assumption)"));
  } else {
    r.notes.push_back(StrCat("link efficiency ", c.link_efficiency, " (the built-in 0.68 is fitted to DeepEP's one "
                             "intranode H800 figure, not validated; across nodes the model is not validated), GEMM "
                             "efficiency ", c.gemm_efficiency, " (an assumption); calibrate both with a profile file"));
  }
  r.notes.push_back("no overlap of communication with compute is assumed (two-batch overlap would hide part of it)");
  return r;
}

}  // namespace moex::plan
