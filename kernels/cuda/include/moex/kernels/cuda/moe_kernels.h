// CUDA kernels of one MoE layer on one GPU: routing, permutation into
// expert-major rows, the experts' activation, un-permutation with the
// weighted combine, and every local expert's projection in one grouped GEMM (cuBLAS).
//
// They compute what the CPU kernels (kernels/cpu) compute, with the same
// tie rules, so a GPU rank routes exactly as a CPU rank: ties to the lower
// expert index, groups ranked as model::RouterSpec says. Inputs and
// outputs are device pointers; nothing is allocated on the hot path (the
// caller sizes workspaces once with the *Bytes functions); every call
// enqueues on `stream` and returns the launch error, if any.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex::kernels::cuda {

// Elements of activations: fp32 or bf16 (stored as uint16 bits).
enum class Dtype { kF32, kBF16 };

// How a router turns logits into scores (model::RouterSpec::scoring).
enum class Scoring { kSoftmax, kSigmoid, kSqrtSoftplus };

// Routing of `num_tokens` tokens over `num_experts` (<= 1024) experts,
// top-k <= 8. logits [T, E] fp32, plus `logit_bias` [E] (gpt-oss) when not
// null. scoring: softmax; sigmoid; or sqrtsoftplus, sqrt(softplus(logit))
// (DeepSeek-V4). The non-softmax scorings choose by score + `bias` [E]
// (the correction bias) when there is one or groups > 1, by the logit
// itself otherwise, as the CPU router does. groups > 1: group-limited
// (softmax: a group's best choice; otherwise the sum of its best two).
// Writes topk_idx [T, k] and topk_weights [T, k] (the scores, renormalised
// when `renormalize`, times `scale`).
struct RouteArgs {
  const float* logits = nullptr;
  int num_tokens = 0, num_experts = 0, top_k = 0;
  Scoring scoring = Scoring::kSoftmax;
  const float* bias = nullptr;
  const float* logit_bias = nullptr;
  int groups = 1, topk_groups = 1;
  bool renormalize = false;
  float scale = 1.0f;
  int32_t* topk_idx = nullptr;
  float* topk_weights = nullptr;
};
absl::Status Route(const RouteArgs& args, cudaStream_t stream);

// Permutation of the (token, choice) pairs into expert-major rows, stable:
// within an expert, rows follow token order, so results are bitwise
// reproducible. PermuteWorkspaceBytes sizes `workspace` for at most
// `max_pairs` pairs over `num_experts` experts.
size_t PermuteWorkspaceBytes(int max_pairs, int num_experts);
struct PermuteArgs {
  const void* x = nullptr;            // [T, H] of `dtype`
  const int32_t* topk_idx = nullptr;  // [T, k]
  int num_tokens = 0, top_k = 0, hidden = 0, num_experts = 0;
  Dtype dtype = Dtype::kF32;
  void* permuted = nullptr;           // [T * k, H] of `dtype`, expert-major
  int32_t* row_of_pair = nullptr;     // [T * k]: the permuted row of pair t * k + j
  int32_t* expert_offsets = nullptr;  // [E + 1]: expert e's rows are [offsets[e], offsets[e + 1])
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
absl::Status Permute(const PermuteArgs& args, cudaStream_t stream);

// y[t] = sum over j of topk_weights[t, j] * rows[row_of_pair[t * k + j]],
// summed in j order in fp32; y [T, H] of `out_dtype`. Up to 16 rows a token
// (the combine sums a token's partial rows from every rank that served it,
// and its shared expert's row); up to 8 take the vectorised path.
struct UnpermuteArgs {
  const void* rows = nullptr;  // [T * k, H] of `dtype`
  const int32_t* row_of_pair = nullptr;
  const float* topk_weights = nullptr;
  int num_tokens = 0, top_k = 0, hidden = 0;
  Dtype dtype = Dtype::kF32, out_dtype = Dtype::kF32;
  void* y = nullptr;
};
absl::Status Unpermute(const UnpermuteArgs& args, cudaStream_t stream);

// What an expert computes between its gate/up and down projections
// (model::ExpertActivation, which this library does not link), as
// kernels/cpu/expert_ffn.cc computes it, with g the gate and u the up row:
//   kSilu:      silu(g) * u; when limit > 0 (DeepSeek-V4) first
//               g = min(g, limit), u = clamp(u, -limit, limit).
//   kSwigluOai: g = min(g, limit), u = clamp(u, -limit, limit),
//               (u + 1) * g * sigmoid(alpha * g) (gpt-oss; always clamped).
//   kRelu2:     relu(u)^2, not gated (Nemotron-H).
enum class Activation { kSilu, kSwigluOai, kRelu2 };

// out [R, F] = the activation of `in`: [R, 2F] (gate, then up) for the
// gated kinds, [R, F] (up) for kRelu2; fp32 math, in and out of `dtype`.
// With `bias` (fp32, [E, 2F] gate then up, or [E, F] for kRelu2), row r
// adds the bias of its expert, the e with expert_offsets[e] <= r <
// expert_offsets[e + 1] (the device offsets Permute writes, E =
// `num_experts`), before the activation: gpt-oss's gate/up biases.
struct ActivationArgs {
  const void* in = nullptr;
  int rows = 0, width = 0;
  Dtype dtype = Dtype::kF32;
  Activation kind = Activation::kSilu;
  float limit = 0;
  float alpha = 1.702f;
  const float* bias = nullptr;
  const int32_t* expert_offsets = nullptr;
  int num_experts = 0;
  void* out = nullptr;
};
absl::Status Activate(const ActivationArgs& args, cudaStream_t stream);

// out [R, F] = silu(gate_up[:, :F]) * gate_up[:, F:], gate_up [R, 2F]:
// Activate with kSilu and no clamp.
absl::Status SwiGlu(const void* gate_up, int rows, int width, Dtype dtype, void* out, cudaStream_t stream);

// rows [R, width] of `dtype` += bias [E, width] (fp32) of each row's expert,
// found in expert_offsets [E + 1] as Activate finds it: gpt-oss's down bias,
// added before the weighted combine as the CPU expert adds it.
absl::Status AddExpertBias(void* rows, int num_rows, int width, Dtype dtype, const float* bias,
                           const int32_t* expert_offsets, int num_experts, cudaStream_t stream);

// All local experts' projections: out_e [n_e, N] = in_e [n_e, K] . W_e^T
// for each expert e with n_e rows (from `expert_offsets`, copied to the
// host once per call), W_e [N, K] row-major; inputs and weights bf16 or
// fp32, fp32 accumulation, out of the input dtype.
//
// Two ways to run them. kGroupedCall: one cublasGemmGroupedBatchedEx call
// for all experts, which pays one launch however many experts there are.
// kPerExpert: one cublasGemmEx per active expert on the same stream, which
// picks cuBLAS's best kernel for each shape. Measured on an H200 with cuBLAS
// 13.0 (docs/results/2026-11-29-H200): at 1024 rows per expert the grouped
// call ran at 0.35 of a dense GEMM of the same FLOPs; per-expert calls win
// there, the grouped call where experts hold few rows. kAuto takes the
// grouped call below `kPerExpertMinRows` mean rows per active expert.
enum class GemmMode { kAuto, kGroupedCall, kPerExpert };
const char* GemmModeName(GemmMode mode);

class GroupedGemm {
 public:
  static constexpr int kPerExpertMinRows = 128;
  static absl::StatusOr<GroupedGemm> Create(int max_experts, GemmMode mode = GemmMode::kAuto);
  GroupedGemm(GroupedGemm&& other) noexcept;
  GroupedGemm& operator=(GroupedGemm&&) = delete;
  ~GroupedGemm();

  absl::Status Run(const void* in, const void* const* weights_host, const int32_t* expert_offsets_device,
                   int num_experts, int n, int k, Dtype dtype, void* out, cudaStream_t stream);
  // The row counts of the last Run (host).
  const std::vector<int32_t>& rows_per_expert() const { return rows_; }
  // How the last Run ran (kGroupedCall or kPerExpert).
  GemmMode last_mode() const { return last_mode_; }
  void set_mode(GemmMode mode) { mode_ = mode; }

 private:
  GroupedGemm() = default;
  cublasHandle_t handle_ = nullptr;
  int max_experts_ = 0;
  GemmMode mode_ = GemmMode::kAuto, last_mode_ = GemmMode::kAuto;
  const void** a_device_ = nullptr;  // pointer arrays cuBLAS reads from the device
  const void** b_device_ = nullptr;
  void** c_device_ = nullptr;
  std::vector<int32_t> offsets_, rows_;
  std::vector<const void*> a_, b_;
  std::vector<void*> c_;
};

// dst row r = src row index[r], rows of `row_bytes`: the dispatch's send
// buffer, destination-major, from the local tokens.
absl::Status GatherRows(const void* src, const int32_t* index, int rows, size_t row_bytes, void* dst,
                        cudaStream_t stream);

// Who goes where, on the device: what ep::GetDispatchLayout computes on the
// host (DeepEP's get_dispatch_layout), so that a step need not copy the
// top-k to the host to lay out its dispatch. Token t's choice j (logical
// expert e = topk_idx[t, j]) goes to slot
//   expert_slots[expert_slot_offsets[e] + (first_token + t) % n_e],
// n_e = expert_slot_offsets[e + 1] - expert_slot_offsets[e] (its replicas;
// placement::Placement::ChooseSlot's rule), on rank slot_rank[slot]. Writes
// topk_slot [T, k] (-1 for an expert outside [0, E) or without a slot, not
// counted), is_token_in_rank [T, W] (0 or 1), num_tokens_per_rank [W]
// (distinct tokens each rank receives) and num_tokens_per_slot [S] (pairs
// each slot serves); the counts are zeroed first and are integers, so they
// are the same whatever order the threads run in. k <= 16, W <= 1024.
struct DispatchLayoutArgs {
  const int32_t* topk_idx = nullptr;  // [T, k]
  int num_tokens = 0, top_k = 0;
  int64_t first_token = 0;
  const int32_t* expert_slot_offsets = nullptr;  // [E + 1]
  const int32_t* expert_slots = nullptr;         // [S]: each expert's slots, in order
  int num_experts = 0;
  const int32_t* slot_rank = nullptr;  // [S]
  int num_slots = 0, world_size = 0;
  int32_t* topk_slot = nullptr;
  uint8_t* is_token_in_rank = nullptr;
  int32_t* num_tokens_per_rank = nullptr;
  int32_t* num_tokens_per_slot = nullptr;
};
absl::Status GetDispatchLayout(const DispatchLayoutArgs& args, cudaStream_t stream);

// Rows quantised for an FP8 dispatch, in kernels/fp8_rows.h's format and
// with the same bytes as the CPU's QuantizeRowsFp8 (every step one IEEE
// fp32 operation; a value that rounds to zero is +0): x [rows, hidden] of
// `dtype` -> q [rows, hidden] e4m3fn, scales [rows, ceil(hidden / 128)]
// fp32. One thread block of 128 a scale block.
struct QuantizeFp8Args {
  const void* x = nullptr;
  int rows = 0, hidden = 0;
  Dtype dtype = Dtype::kF32;
  uint8_t* q = nullptr;
  float* scales = nullptr;
};
absl::Status QuantizeRowsFp8(const QuantizeFp8Args& args, cudaStream_t stream);
// And back, as the CPU's DequantizeRowFp8: x [rows, hidden] of `dtype` =
// float(q) * its block's scale (rounded to bf16 where `dtype` is).
absl::Status DequantizeRowsFp8(const uint8_t* q, const float* scales, int rows, int hidden, Dtype dtype, void* x,
                               cudaStream_t stream);

// `count` elements from `in_dtype` to `out_dtype` (rounded to nearest even).
absl::Status Convert(const void* in, Dtype in_dtype, size_t count, void* out, Dtype out_dtype, cudaStream_t stream);

// `count` values uniform in [lo, hi) from a hash of (seed, index): test and
// benchmark data made on the device, the same on any GPU.
absl::Status FillUniform(void* data, size_t count, Dtype dtype, float lo, float hi, uint64_t seed,
                         cudaStream_t stream);

// "no CUDA device: <why>" when this process sees none.
absl::Status DeviceAvailable();

}  // namespace moex::kernels::cuda
