// `moex plan --perf`: a first-order performance model of one MoE layer
// under expert parallelism, per EP size.
//
// Traffic follows how DeepEP-style dispatch moves tokens: a token goes once
// to each distinct destination *node* over the network (to the GPU with the
// same index there), then over NVLink to each distinct destination GPU on
// that node; tokens for GPUs of its own node go over NVLink directly.
// Combine retraces the path with the combine dtype. The fan-out (distinct
// ranks and nodes per token) and the hottest rank's share of the routed
// pairs come from sampling the router: top-k over the experts, within
// top-k groups for group-limited routers, expert popularity uniform, Zipf
// (--routing-skew) or measured (--load), experts placed contiguously.
//
//   dispatch = max(network bytes / NIC bandwidth, NVLink bytes / NVLink
//              bandwidth), each at the link efficiency, for the busier of the
//              average sender and the hottest receiver, + link latency
//   experts  = max(FLOPs of the hottest rank's pairs and the shared expert /
//              (peak x GEMM efficiency), local expert weights / HBM bandwidth)
//   layer    = dispatch + experts + combine (no overlap assumed)
//
// --mode low-latency models DeepEP's low-latency kernels instead
// (runtime/plan/src/perf_low_latency.cc): one message per (token,
// destination expert), over the NIC for every destination but the own rank,
// same-node ones included (the kernels as first published), or over NVLink
// for same-node ones (--ll-intranode nvlink: DeepEP since its PR #173, NCCL
// EP); the hottest endpoint of the batch bounds it, plus a synchronisation
// latency. Its efficiencies are fitted on DeepEP's published tables
// (docs/plan.md says which points).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"

namespace moex::plan {

struct ClusterProfile {
  std::string name;
  std::string source;              // where the figures come from
  int64_t gpus_per_node = 8;
  double nvlink_gbps = 0;          // GB/s per GPU, one direction
  double nvlink_latency_us = 0;
  double nic_gbps = 0;             // GB/s per GPU, one direction
  double nic_latency_us = 0;
  double bf16_tflops = 0;          // dense
  double fp8_tflops = 0;           // dense
  double fp32_tflops = 0;          // dense, no tensor cores; 0: unknown (calibrated profiles give it)
  double hbm_tbps = 0;
  double gpu_mem_gib = 0;
  double gemm_efficiency = 0.6;    // of peak, grouped expert GEMMs
  // Of link bandwidth, all-to-all. FITTED, not validated: the value that
  // gives DeepEP's one published intranode point (H800, EP 8, dispatch 153
  // GB/s on DeepEP's byte convention, see EpPerf) with DeepEP's routing;
  // one constant on one point. Combine (158 GB/s, not fitted) comes within
  // 3%; internode the model is not validated (docs/plan.md).
  double link_efficiency = 0.68;
  // Low-latency mode (perf_low_latency.cc). Of the NIC's bandwidth, per
  // (token, expert) messages: FITTED on one point, DeepEP's pure-RDMA EP 8
  // dispatch (163 us, H800, 128 tokens); its other 11 points (dispatch EP
  // 16-256, combine EP 8-256) are checked, not fitted.
  double ll_efficiency = 0.879;
  // Of NVLink bandwidth, same-node messages under --ll-intranode nvlink:
  // FITTED on DeepEP's EP 8 dispatch since its PR #173 (77 us); checked
  // against its combine (114 us) and NCCL EP's H100 EP 8 figures.
  double ll_nvlink_efficiency = 0.469;
  // Per message, on top of its bytes. 0: not identifiable from the
  // published tables (every point sends 128 x 8 messages a rank, so it
  // folds into ll_efficiency); a profile file may set a measured one.
  double ll_message_us = 0;
};

// h100, h800, h200, b200: published figures (see the .cc for each).
absl::StatusOr<ClusterProfile> BuiltinProfile(const std::string& name);
// A built-in name, or a JSON file with the fields above (missing ones keep
// the H100 figures; unknown ones are an error).
absl::StatusOr<ClusterProfile> LoadProfile(const std::string& name_or_file);

struct PerfOptions {
  ClusterProfile cluster;
  std::vector<int64_t> ep_sizes = {8, 16, 32, 64, 128, 256};
  int64_t tokens_per_rank = 4096;
  std::string dispatch_dtype = "fp8";   // fp8 (with per-128 scales), bf16 or fp32
  std::string combine_dtype = "bf16";   // bf16 or fp32
  std::string expert_dtype = "fp8";     // weights and GEMM inputs: fp8, bf16 or fp32
  double routing_skew = 0;              // Zipf exponent of expert popularity
  std::vector<double> load;             // measured load per logical expert (overrides skew)
  uint64_t seed = 1;
  int64_t samples = 8192;               // tokens sampled for the fan-out
  // "normal" (DeepEP's normal kernels: NVLink forwarding, bandwidth-bound) or
  // "low-latency" (its low-latency kernels: per (token, expert) messages,
  // fixed-size buffers of tokens_per_rank slots; perf_low_latency.cc).
  std::string mode = "normal";
  // Low-latency mode only: how same-node destinations are reached, "rdma"
  // (through the NIC, as DeepEP's kernels first did) or "nvlink".
  std::string ll_intranode = "rdma";
};

struct EpPerf {
  int64_t ep = 0;
  int64_t nodes = 0;
  double experts_per_rank = 0;
  double ranks_per_token = 0;        // distinct destination ranks (self included when chosen)
  double nodes_per_token = 0;        // distinct destination nodes (own included when chosen)
  double rank_imbalance = 0;         // hottest rank's routed pairs / mean
  double dispatch_bytes_per_rank = 0;          // leaving a rank, NVLink + network
  double dispatch_network_bytes_per_rank = 0;
  double dispatch_nvlink_bytes_per_rank = 0;
  double combine_bytes_per_rank = 0;
  double dispatch_us = 0, combine_us = 0, expert_us = 0, layer_us = 0;
  double dispatch_gbps = 0, combine_gbps = 0;  // bytes per rank / time (moex's convention: leaving the rank)
  // The same times over the bytes DeepEP's tests count (tests/test_intranode.py
  // and test_internode.py of deepseek-ai/DeepEP), so that its published
  // figures compare on one convention: within a node, every (token,
  // destination rank) copy a rank receives, its own tokens included
  // (recv_x's bytes); across nodes, every (token, destination node) copy
  // a rank sends over RDMA, its own node included (num_rdma_token_sent).
  double deepep_dispatch_bytes_per_rank = 0, deepep_combine_bytes_per_rank = 0;
  double deepep_dispatch_gbps = 0, deepep_combine_gbps = 0;
  double expert_tflops = 0;          // achieved on the hottest rank
  std::string expert_bound;          // "compute" or "memory"
  double comm_fraction = 0;          // (dispatch + combine) / layer
  // Low-latency mode only (0 otherwise).
  double ll_messages_per_rank = 0;      // (token, expert) messages a rank sends, its own rank's included
  double ll_hot_network_messages = 0;   // the hottest endpoint's messages over the NIC (sent or received)
  double ll_hot_nvlink_messages = 0;    // ... over NVLink (--ll-intranode nvlink)
  double ll_dispatch_message_bytes = 0, ll_combine_message_bytes = 0;
  double ll_sync_us = 0;                // the synchronisation latency in each phase
  double ll_buffer_bytes_per_rank = 0;  // DeepEP's fixed RDMA buffer for tokens_per_rank slots (LowLatencyLayout)
};

struct PerfReport {
  std::string cluster;
  std::string mode;           // "normal" or "low-latency"
  std::string ll_intranode;   // low-latency mode: "rdma" or "nvlink"; "" otherwise
  int64_t tokens_per_rank = 0;
  int64_t moe_layers = 0;
  int64_t hidden = 0, experts = 0, top_k = 0, expert_width = 0, shared_width = 0;
  std::vector<EpPerf> ep;
  std::vector<std::string> notes;
};

absl::StatusOr<PerfReport> ModelPerf(const model::ModelArch& arch, const PerfOptions& options);

}  // namespace moex::plan
