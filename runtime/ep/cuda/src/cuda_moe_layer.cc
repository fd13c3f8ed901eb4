#include "moex/ep/cuda_moe_layer.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "moex/ep/dispatch.h"
#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::ep {
namespace {

using kernels::cuda::Dtype;

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::Status Cuda(cudaError_t code, int rank, std::string_view what) {
  if (code == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(StrCat("cuda layer, rank ", rank, ": ", what, ": ", cudaGetErrorString(code)));
}

// A device allocation that only grows.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  // At least `bytes`; new memory is zeroed.
  absl::Status Reserve(size_t bytes, int rank, std::string_view what) {
    bytes = std::max<size_t>(bytes, 256);
    if (bytes <= capacity_) return absl::OkStatus();
    // Geometric growth: a run of small increases reallocates O(log n) times,
    // not once per increase.
    const size_t grown = std::max(bytes, capacity_ + capacity_ / 2);
    if (p_ != nullptr) cudaFree(p_);
    p_ = nullptr;
    capacity_ = 0;
    MOEX_RETURN_IF_ERROR(Cuda(cudaMalloc(&p_, grown), rank, StrCat("cudaMalloc(", grown, " bytes) for ", what)));
    capacity_ = grown;
    return Cuda(cudaMemset(p_, 0, grown), rank, "cudaMemset");
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }
  char* bytes() const { return static_cast<char*>(p_); }

 private:
  void* p_ = nullptr;
  size_t capacity_ = 0;
};

// Host fp32 rows, back to back, as one bf16 device matrix.
// Weights kept in another dtype on the host are turned into fp32 a matrix
// at a time here, then into the bf16 the grouped GEMM takes (no FP8 GEMM on
// the device yet).
absl::Status UploadBf16(const std::vector<const StoredMatrix*>& parts, DeviceBuffer* out, int rank,
                        std::string_view what) {
  size_t n = 0;
  for (const StoredMatrix* m : parts) n += static_cast<size_t>(m->rows * m->cols);
  std::vector<uint16_t> bits;
  bits.reserve(n);
  for (const StoredMatrix* m : parts) {
    const Tensor values = m->ToTensor();
    for (float v : values.values) bits.push_back(FloatToBf16(v));
  }
  MOEX_RETURN_IF_ERROR(out->Reserve(n * 2, rank, what));
  return Cuda(cudaMemcpy(out->get(), bits.data(), n * 2, cudaMemcpyHostToDevice), rank, StrCat("upload ", what));
}

template <typename T>
absl::Status Upload(const std::vector<T>& host, DeviceBuffer* out, cudaStream_t stream, int rank, std::string_view what) {
  MOEX_RETURN_IF_ERROR(out->Reserve(host.size() * sizeof(T), rank, what));
  if (host.empty()) return absl::OkStatus();
  return Cuda(cudaMemcpyAsync(out->get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream), rank,
              StrCat("upload ", what));
}

kernels::cuda::Activation KernelActivation(model::ExpertActivation activation) {
  switch (activation) {
    case model::ExpertActivation::kSilu:
      return kernels::cuda::Activation::kSilu;
    case model::ExpertActivation::kSwigluOai:
      return kernels::cuda::Activation::kSwigluOai;
    case model::ExpertActivation::kRelu2:
      return kernels::cuda::Activation::kRelu2;
  }
  return kernels::cuda::Activation::kSilu;
}

kernels::cuda::Scoring KernelScoring(const std::string& scoring) {
  if (scoring == "sigmoid") return kernels::cuda::Scoring::kSigmoid;
  if (scoring == "sqrtsoftplus") return kernels::cuda::Scoring::kSqrtSoftplus;
  return kernels::cuda::Scoring::kSoftmax;
}

// The matrices of w1, the first projection: [gate; up], or up alone when
// the MLP is not gated (relu^2).
std::vector<const StoredMatrix*> FirstProjection(const ExpertWeights& w, const model::ExpertMlpSpec& mlp) {
  if (mlp.gated()) return {&w.gate, &w.up};
  return {&w.up};
}

// `part` at `at` in `out`, or zeros when it is empty (an expert without
// that bias); any other size is an error.
absl::Status PlaceBias(const std::vector<float>& part, size_t size, size_t at, std::vector<float>* out, int rank,
                       std::string_view what) {
  if (part.empty()) return absl::OkStatus();
  if (part.size() != size) {
    return absl::FailedPreconditionError(StrCat("cuda layer, rank ", rank, ": ", what, " has ", part.size(),
                                                " values, the layer needs ", size));
  }
  std::copy(part.begin(), part.end(), out->begin() + static_cast<std::ptrdiff_t>(at));
  return absl::OkStatus();
}

// The activation of rows [rows, width] of `in` into `out`, bf16, as `mlp`
// says; `bias` [experts, (gated ? 2 : 1) * width] by `offsets`, or null.
absl::Status ActivateRows(const model::ExpertMlpSpec& mlp, const void* in, int64_t rows, int64_t width,
                          const float* bias, const int32_t* offsets, int64_t experts, void* out,
                          cudaStream_t stream) {
  kernels::cuda::ActivationArgs a;
  a.in = in, a.rows = static_cast<int>(rows), a.width = static_cast<int>(width), a.dtype = Dtype::kBF16;
  a.kind = KernelActivation(mlp.activation);
  a.limit = static_cast<float>(mlp.swiglu_limit), a.alpha = static_cast<float>(mlp.swiglu_alpha);
  a.bias = bias, a.expert_offsets = offsets, a.num_experts = static_cast<int>(experts), a.out = out;
  return kernels::cuda::Activate(a, stream);
}

}  // namespace

struct CudaMoeLayer::Impl {
  MoeLayerSpec spec;
  Placement placement;
  int rank = 0, world = 1;
  int64_t slots = 0;
  transport::NcclTransport* nccl = nullptr;
  cublasHandle_t cublas = nullptr;
  std::optional<kernels::cuda::GroupedGemm> gemm, shared_gemm;

  // Weights: router fp32 [E, H], correction bias [E], logit bias [E]; per
  // local slot w1 = [gate; up] [2F, H] (up [F, H] when not gated) and w2 =
  // down [H, F], bf16; the shared expert likewise. With biases (gpt-oss),
  // fp32 for all local slots: bias1 [slots, 2F] (gate; up), bias2 [slots, H].
  DeviceBuffer router, bias, router_bias, bias1, bias2;
  bool has_router_bias = false, has_expert_biases = false;
  std::vector<std::unique_ptr<DeviceBuffer>> w1, w2;
  std::vector<const void*> w1_ptrs, w2_ptrs;
  DeviceBuffer shared_w1, shared_w2, shared_offsets;
  int64_t shared_width = 0;

  // Step buffers, reused.
  DeviceBuffer x32, xb, logits, topk_idx, topk_w, send_index, send_rows, recv_rows, recv_idx, recv_w, permuted,
      row_of_pair, offsets, workspace, gate_up, act, down_out, partial, back, comb_idx, comb_w, y, shared_gate_up,
      shared_act;
  std::vector<int32_t> topk_idx_h, send_order, recv_idx_h, comb_idx_h;
  std::vector<float> topk_w_h, recv_w_h, comb_w_h;
  std::vector<int64_t> back_row;  // [T, W] row in `back` of (token, rank), or -1
  std::vector<std::byte> send_meta, recv_meta;

  ~Impl() {
    if (cublas != nullptr) cublasDestroy(cublas);
  }

  absl::Status Sync(std::string_view what) const { return Cuda(cudaStreamSynchronize(nccl->stream()), rank, what); }
};

CudaMoeLayer::CudaMoeLayer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaMoeLayer::~CudaMoeLayer() = default;

absl::StatusOr<std::unique_ptr<CudaMoeLayer>> CudaMoeLayer::Create(const MoeLayerSpec& spec, const Placement& placement,
                                                                   const MoeWeights& weights, int rank,
                                                                   transport::NcclTransport& nccl) {
  if (spec.num_experts > 1024 || spec.top_k > 8) {
    return absl::UnimplementedError(StrCat("--device cuda routes up to 1024 experts and top-8; the layer has ",
                                           spec.num_experts, " experts, top-", spec.top_k));
  }
  if (spec.shared_expert_gate) {
    return absl::UnimplementedError("--device cuda: the shared-expert gate (Qwen2-MoE) is not on the GPU path yet; "
                                    "run this model with --device cpu");
  }
  // What the GPU path does not have yet: the CPU path (--device cpu) runs these.
  if (spec.hash_routed) {
    return absl::UnimplementedError(StrCat("--device cuda: layer ", spec.layer, " of ", spec.model_type,
                                           " is hash-routed (experts from its token-id table), which is not on the "
                                           "GPU path yet; run it with --device cpu, or a scored layer with --layer"));
  }
  if (spec.shared_mlp.biases) {
    return absl::UnimplementedError(StrCat("--device cuda: ", spec.model_type, "'s shared expert (",
                                           model::ExpertActivationName(spec.shared_mlp.activation),
                                           ", biases) has no GPU kernel yet; run this model with --device cpu"));
  }
  if (spec.router.weight_on_input) {
    return absl::UnimplementedError(StrCat("--device cuda: ", spec.model_type,
                                           "'s router (weights on the expert input) is not on the GPU path yet; run "
                                           "this model with --device cpu"));
  }
  if (spec.router.scoring != "softmax" && spec.router.scoring != "sigmoid" && spec.router.scoring != "sqrtsoftplus") {
    return absl::UnimplementedError(StrCat("--device cuda: router scoring '", spec.router.scoring,
                                           "' is not on the GPU path (softmax, sigmoid and sqrtsoftplus are)"));
  }
  if (spec.router.num_groups > 64) {
    return absl::UnimplementedError(StrCat("--device cuda: at most 64 router groups, the layer has ", spec.router.num_groups));
  }
  auto impl = std::make_unique<Impl>();
  impl->spec = spec;
  impl->placement = placement;
  impl->rank = rank;
  impl->world = placement.world_size();
  impl->slots = placement.num_local_slots(rank);
  impl->nccl = &nccl;
  if (cudaError_t c = cudaSetDevice(nccl.device()); c != cudaSuccess) return Cuda(c, rank, "cudaSetDevice");
  if (cublasCreate(&impl->cublas) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(StrCat("cuda layer, rank ", rank, ": cublasCreate failed"));
  }
  cublasSetStream(impl->cublas, nccl.stream());
  cublasSetMathMode(impl->cublas, CUBLAS_PEDANTIC_MATH);  // fp32 routing logits stay fp32 (no TF32)
  MOEX_ASSIGN_OR_RETURN(kernels::cuda::GroupedGemm gemm,
                        kernels::cuda::GroupedGemm::Create(static_cast<int>(std::max<int64_t>(1, impl->slots))));
  impl->gemm.emplace(std::move(gemm));
  const std::vector<float>& router = weights.router.values;
  MOEX_RETURN_IF_ERROR(impl->router.Reserve(router.size() * 4, rank, "router"));
  MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpy(impl->router.get(), router.data(), router.size() * 4, cudaMemcpyHostToDevice),
                            rank, "upload router"));
  if (!weights.correction_bias.values.empty()) {
    const std::vector<float>& b = weights.correction_bias.values;
    MOEX_RETURN_IF_ERROR(impl->bias.Reserve(b.size() * 4, rank, "correction bias"));
    MOEX_RETURN_IF_ERROR(
        Cuda(cudaMemcpy(impl->bias.get(), b.data(), b.size() * 4, cudaMemcpyHostToDevice), rank, "upload bias"));
  }
  if (!weights.router_bias.values.empty()) {
    const std::vector<float>& b = weights.router_bias.values;
    if (static_cast<int64_t>(b.size()) != spec.num_experts) {
      return absl::FailedPreconditionError(StrCat("cuda layer, rank ", rank, ": the router's logit bias has ", b.size(),
                                                  " values for ", spec.num_experts, " experts"));
    }
    MOEX_RETURN_IF_ERROR(impl->router_bias.Reserve(b.size() * 4, rank, "router logit bias"));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpy(impl->router_bias.get(), b.data(), b.size() * 4, cudaMemcpyHostToDevice), rank,
                              "upload router logit bias"));
    impl->has_router_bias = true;
  }
  const int64_t F = spec.expert_width, H = spec.hidden;
  const int64_t n1 = (spec.mlp.gated() ? 2 : 1) * F;  // w1's rows
  std::vector<float> bias1, bias2;
  impl->has_expert_biases = spec.mlp.biases && impl->slots > 0;
  if (impl->has_expert_biases) {
    bias1.assign(static_cast<size_t>(impl->slots * n1), 0.0f);
    bias2.assign(static_cast<size_t>(impl->slots * H), 0.0f);
  }
  for (int64_t s = 0; s < impl->slots; ++s) {
    const int64_t expert = placement.slot_expert(placement.first_slot(rank) + s);
    auto it = weights.experts.find(expert);
    if (it == weights.experts.end()) {
      return absl::FailedPreconditionError(StrCat("rank ", rank, " holds expert ", expert, " but has no weights for it"));
    }
    impl->w1.push_back(std::make_unique<DeviceBuffer>());
    impl->w2.push_back(std::make_unique<DeviceBuffer>());
    MOEX_RETURN_IF_ERROR(UploadBf16(FirstProjection(it->second, spec.mlp), impl->w1.back().get(), rank,
                                    StrCat("expert ", expert, spec.mlp.gated() ? " gate/up" : " up")));
    if (impl->has_expert_biases) {
      const ExpertWeights& w = it->second;
      const size_t at = static_cast<size_t>(s * n1), up_at = at + (spec.mlp.gated() ? static_cast<size_t>(F) : 0);
      if (spec.mlp.gated()) {
        MOEX_RETURN_IF_ERROR(PlaceBias(w.gate_bias, F, at, &bias1, rank, StrCat("expert ", expert, "'s gate bias")));
      }
      MOEX_RETURN_IF_ERROR(PlaceBias(w.up_bias, F, up_at, &bias1, rank, StrCat("expert ", expert, "'s up bias")));
      MOEX_RETURN_IF_ERROR(
          PlaceBias(w.down_bias, H, static_cast<size_t>(s * H), &bias2, rank, StrCat("expert ", expert, "'s down bias")));
    }
    MOEX_RETURN_IF_ERROR(UploadBf16({&it->second.down}, impl->w2.back().get(), rank, StrCat("expert ", expert, " down")));
    impl->w1_ptrs.push_back(impl->w1.back()->get());
    impl->w2_ptrs.push_back(impl->w2.back()->get());
  }
  if (impl->has_expert_biases) {
    MOEX_RETURN_IF_ERROR(impl->bias1.Reserve(bias1.size() * 4, rank, "expert gate/up biases"));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpy(impl->bias1.get(), bias1.data(), bias1.size() * 4, cudaMemcpyHostToDevice),
                              rank, "upload expert gate/up biases"));
    MOEX_RETURN_IF_ERROR(impl->bias2.Reserve(bias2.size() * 4, rank, "expert down biases"));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpy(impl->bias2.get(), bias2.data(), bias2.size() * 4, cudaMemcpyHostToDevice),
                              rank, "upload expert down biases"));
  }
  if (weights.shared) {
    // up, not gate: a relu^2 shared expert (Nemotron-H) has no gate.
    impl->shared_width = weights.shared->up.rows;
    MOEX_RETURN_IF_ERROR(UploadBf16(FirstProjection(*weights.shared, spec.shared_mlp), &impl->shared_w1, rank,
                                    spec.shared_mlp.gated() ? "shared gate/up" : "shared up"));
    MOEX_RETURN_IF_ERROR(UploadBf16({&weights.shared->down}, &impl->shared_w2, rank, "shared down"));
    MOEX_ASSIGN_OR_RETURN(kernels::cuda::GroupedGemm shared, kernels::cuda::GroupedGemm::Create(1));
    impl->shared_gemm.emplace(std::move(shared));
    MOEX_RETURN_IF_ERROR(impl->shared_offsets.Reserve(2 * sizeof(int32_t), rank, "shared offsets"));
  }
  return std::unique_ptr<CudaMoeLayer>(new CudaMoeLayer(std::move(impl)));
}

absl::Status CudaMoeLayer::Forward(transport::Transport& host, const Tensor& x, int64_t first_token, Deadline deadline,
                                   Tensor* y, StepStats* stats) {
  Impl& m = *impl_;
  const MoeLayerSpec& spec = m.spec;
  const int64_t H = spec.hidden, k = spec.top_k, E = spec.num_experts, F = spec.expert_width;
  const int W = m.world, rank = m.rank;
  if (x.shape.size() != 2 || x.dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("rank ", rank, ": hidden states have shape ", ShapeString(x.shape),
                                             ", the layer needs [tokens, ", H, "]"));
  }
  const int64_t T = x.dim(0);
  cudaStream_t stream = m.nccl->stream();
  *stats = StepStats{};
  stats->tokens = T;
  const size_t row_bf16 = static_cast<size_t>(H) * 2;

  // Route on the device; the choices come to the host for the layout.
  auto start = std::chrono::steady_clock::now();
  MOEX_RETURN_IF_ERROR(m.x32.Reserve(T * H * 4, rank, "tokens"));
  MOEX_RETURN_IF_ERROR(m.xb.Reserve(T * row_bf16, rank, "tokens bf16"));
  MOEX_RETURN_IF_ERROR(m.logits.Reserve(T * E * 4, rank, "router logits"));
  MOEX_RETURN_IF_ERROR(m.topk_idx.Reserve(T * k * 4, rank, "top-k"));
  MOEX_RETURN_IF_ERROR(m.topk_w.Reserve(T * k * 4, rank, "top-k weights"));
  m.topk_idx_h.resize(T * k);
  m.topk_w_h.resize(T * k);
  if (T > 0) {
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(m.x32.get(), x.data(), T * H * 4, cudaMemcpyHostToDevice, stream), rank,
                              "upload tokens"));
    MOEX_RETURN_IF_ERROR(kernels::cuda::Convert(m.x32.get(), Dtype::kF32, T * H, m.xb.get(), Dtype::kBF16, stream));
    const float one = 1, zero = 0;
    if (cublasSgemm(m.cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(E), static_cast<int>(T), static_cast<int>(H),
                    &one, m.router.get<float>(), static_cast<int>(H), m.x32.get<float>(), static_cast<int>(H), &zero,
                    m.logits.get<float>(), static_cast<int>(E)) != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(StrCat("cuda layer, rank ", rank, ": router cublasSgemm failed"));
    }
    kernels::cuda::RouteArgs r;
    r.logits = m.logits.get<float>(), r.num_tokens = static_cast<int>(T), r.num_experts = static_cast<int>(E);
    r.top_k = static_cast<int>(k), r.scoring = KernelScoring(spec.router.scoring);
    r.bias = spec.router.has_correction_bias ? m.bias.get<float>() : nullptr;
    r.logit_bias = m.has_router_bias ? m.router_bias.get<float>() : nullptr;
    r.groups = static_cast<int>(spec.router.num_groups), r.topk_groups = static_cast<int>(spec.router.topk_groups);
    r.renormalize = spec.router.norm_topk_prob, r.scale = static_cast<float>(spec.router.routed_scaling_factor);
    r.topk_idx = m.topk_idx.get<int32_t>(), r.topk_weights = m.topk_w.get<float>();
    MOEX_RETURN_IF_ERROR(kernels::cuda::Route(r, stream));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(m.topk_idx_h.data(), m.topk_idx.get(), T * k * 4, cudaMemcpyDeviceToHost,
                                              stream), rank, "download top-k"));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(m.topk_w_h.data(), m.topk_w.get(), T * k * 4, cudaMemcpyDeviceToHost,
                                              stream), rank, "download top-k weights"));
    MOEX_RETURN_IF_ERROR(m.Sync("routing"));
  }
  DispatchLayout layout = GetDispatchLayout(m.placement, m.topk_idx_h.data(), T, k, first_token);
  for (int r = 0; r < W; ++r) {
    if (r != rank) stats->remote_token_copies += layout.num_tokens_per_rank[r];
  }
  stats->route_seconds = Since(start);

  // Dispatch: a token's row once per destination rank, with its (local
  // slot, weight) pairs for that rank; rows destination-major.
  start = std::chrono::steady_clock::now();
  struct Pair {
    int32_t slot;
    float weight;
  };
  const int64_t record = k * static_cast<int64_t>(sizeof(Pair));
  m.send_order.clear();
  m.send_meta.clear();
  m.back_row.assign(T * W, -1);
  std::vector<int64_t> send_tokens(W, 0), recv_tokens(W, 0);
  for (int d = 0; d < W; ++d) {
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * W + d]) continue;
      m.back_row[t * W + d] = static_cast<int64_t>(m.send_order.size());
      m.send_order.push_back(static_cast<int32_t>(t));
      ++send_tokens[d];
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = layout.topk_slot[t * k + j];
        Pair p{-1, 0.0f};
        if (m.placement.slot_rank(slot) == d) {
          p = {static_cast<int32_t>(slot - m.placement.first_slot(d)), m.topk_w_h[t * k + j]};
        }
        const auto* b = reinterpret_cast<const std::byte*>(&p);
        m.send_meta.insert(m.send_meta.end(), b, b + sizeof(p));
      }
    }
  }
  const int64_t S = static_cast<int64_t>(m.send_order.size());
  MOEX_RETURN_IF_ERROR(host.ExchangeCounts(send_tokens, recv_tokens, deadline));
  int64_t R = 0;
  for (int64_t c : recv_tokens) R += c;
  std::vector<int64_t> send_meta_bytes(W), recv_meta_bytes(W), send_row_bytes(W), recv_row_bytes(W);
  for (int d = 0; d < W; ++d) {
    send_meta_bytes[d] = send_tokens[d] * record;
    recv_meta_bytes[d] = recv_tokens[d] * record;
    send_row_bytes[d] = send_tokens[d] * static_cast<int64_t>(row_bf16);
    recv_row_bytes[d] = recv_tokens[d] * static_cast<int64_t>(row_bf16);
    if (d != rank) stats->dispatch_bytes += send_row_bytes[d] + send_meta_bytes[d];
  }
  m.recv_meta.resize(R * record);
  MOEX_RETURN_IF_ERROR(host.AllToAllV(m.send_meta.data(), send_meta_bytes, m.recv_meta.data(), recv_meta_bytes, deadline));
  MOEX_RETURN_IF_ERROR(Upload(m.send_order, &m.send_index, stream, rank, "send order"));
  MOEX_RETURN_IF_ERROR(m.send_rows.Reserve(S * row_bf16, rank, "dispatch send rows"));
  MOEX_RETURN_IF_ERROR(m.recv_rows.Reserve(R * row_bf16, rank, "dispatch receive rows"));
  MOEX_RETURN_IF_ERROR(kernels::cuda::GatherRows(m.xb.get(), m.send_index.get<int32_t>(), static_cast<int>(S), row_bf16,
                                                 m.send_rows.get(), stream));
  MOEX_RETURN_IF_ERROR(m.nccl->AllToAllV(m.send_rows.get(), send_row_bytes, m.recv_rows.get(), recv_row_bytes, deadline));
  stats->received_tokens = R;
  stats->dispatch_seconds = Since(start);

  // Experts: expert-major rows of the received tokens; pairs for other
  // ranks' experts go to a last, idle "expert" with weight 0.
  start = std::chrono::steady_clock::now();
  const int64_t slots = m.slots, pairs = R * k;
  m.recv_idx_h.resize(pairs);
  m.recv_w_h.resize(pairs);
  stats->tokens_per_local_slot.assign(slots, 0);
  for (int64_t i = 0; i < pairs; ++i) {
    Pair p;
    std::memcpy(&p, m.recv_meta.data() + i * sizeof(Pair), sizeof(Pair));
    if (p.slot < 0 || p.slot >= slots) {
      if (p.slot >= slots) {
        return absl::InternalError(StrCat("cuda layer, rank ", rank, ": a peer sent local slot ", p.slot, "; this rank has ",
                                          slots));
      }
      m.recv_idx_h[i] = static_cast<int32_t>(slots);
      m.recv_w_h[i] = 0.0f;
    } else {
      m.recv_idx_h[i] = p.slot;
      m.recv_w_h[i] = p.weight;
      ++stats->tokens_per_local_slot[p.slot];
      ++stats->routed_pairs;
    }
  }
  MOEX_RETURN_IF_ERROR(Upload(m.recv_idx_h, &m.recv_idx, stream, rank, "received pairs"));
  MOEX_RETURN_IF_ERROR(Upload(m.recv_w_h, &m.recv_w, stream, rank, "received weights"));
  const size_t ws = kernels::cuda::PermuteWorkspaceBytes(static_cast<int>(pairs), static_cast<int>(slots + 1));
  MOEX_RETURN_IF_ERROR(m.workspace.Reserve(ws, rank, "permute workspace"));
  MOEX_RETURN_IF_ERROR(m.permuted.Reserve(pairs * row_bf16, rank, "permuted rows"));
  MOEX_RETURN_IF_ERROR(m.row_of_pair.Reserve(pairs * 4, rank, "row of pair"));
  MOEX_RETURN_IF_ERROR(m.offsets.Reserve((slots + 2) * 4, rank, "expert offsets"));
  const int64_t n1 = (spec.mlp.gated() ? 2 : 1) * F;  // w1's rows
  MOEX_RETURN_IF_ERROR(m.gate_up.Reserve(pairs * n1 * 2, rank, "gate/up"));
  MOEX_RETURN_IF_ERROR(m.act.Reserve(pairs * F * 2, rank, "activation"));
  MOEX_RETURN_IF_ERROR(m.down_out.Reserve(pairs * row_bf16, rank, "expert output"));
  MOEX_RETURN_IF_ERROR(m.partial.Reserve(R * row_bf16, rank, "partial sums"));
  if (R > 0) {
    kernels::cuda::PermuteArgs p;
    p.x = m.recv_rows.get(), p.topk_idx = m.recv_idx.get<int32_t>(), p.num_tokens = static_cast<int>(R);
    p.top_k = static_cast<int>(k), p.hidden = static_cast<int>(H), p.num_experts = static_cast<int>(slots + 1);
    p.dtype = Dtype::kBF16, p.permuted = m.permuted.get(), p.row_of_pair = m.row_of_pair.get<int32_t>();
    p.expert_offsets = m.offsets.get<int32_t>(), p.workspace = m.workspace.get(), p.workspace_bytes = ws;
    MOEX_RETURN_IF_ERROR(kernels::cuda::Permute(p, stream));
    int64_t rows = 0;
    if (slots > 0) {
      MOEX_RETURN_IF_ERROR(m.gemm->Run(m.permuted.get(), m.w1_ptrs.data(), m.offsets.get<int32_t>(),
                                       static_cast<int>(slots), static_cast<int>(n1), static_cast<int>(H),
                                       Dtype::kBF16, m.gate_up.get(), stream));
      for (int32_t n : m.gemm->rows_per_expert()) rows += n;
      // Biases per row by its slot; the idle last "expert" has none, and
      // its rows, past `rows`, are not activated.
      const int32_t* offsets = m.offsets.get<int32_t>();
      MOEX_RETURN_IF_ERROR(ActivateRows(spec.mlp, m.gate_up.get(), rows, F,
                                        m.has_expert_biases ? m.bias1.get<float>() : nullptr, offsets, slots,
                                        m.act.get(), stream));
      MOEX_RETURN_IF_ERROR(m.gemm->Run(m.act.get(), m.w2_ptrs.data(), offsets, static_cast<int>(slots),
                                       static_cast<int>(H), static_cast<int>(F), Dtype::kBF16, m.down_out.get(), stream));
      // The down bias before the weighted combine, as the CPU expert adds it.
      if (m.has_expert_biases) {
        MOEX_RETURN_IF_ERROR(kernels::cuda::AddExpertBias(m.down_out.get(), static_cast<int>(rows), static_cast<int>(H),
                                                          Dtype::kBF16, m.bias2.get<float>(), offsets,
                                                          static_cast<int>(slots), stream));
      }
    }
    // The idle expert's rows are weighted by 0; zeros keep them from being NaN.
    if (pairs > rows) {
      MOEX_RETURN_IF_ERROR(Cuda(cudaMemsetAsync(m.down_out.bytes() + rows * row_bf16, 0, (pairs - rows) * row_bf16, stream),
                                rank, "clear idle rows"));
    }
    kernels::cuda::UnpermuteArgs u;
    u.rows = m.down_out.get(), u.row_of_pair = m.row_of_pair.get<int32_t>(), u.topk_weights = m.recv_w.get<float>();
    u.num_tokens = static_cast<int>(R), u.top_k = static_cast<int>(k), u.hidden = static_cast<int>(H);
    u.dtype = Dtype::kBF16, u.out_dtype = Dtype::kBF16, u.y = m.partial.get();
    MOEX_RETURN_IF_ERROR(kernels::cuda::Unpermute(u, stream));
  }
  // The shared expert, on the local tokens, writes its rows after the S
  // rows that come back from combine; one zero row after them pads.
  const bool shared = m.shared_gemm.has_value();
  const int64_t shared_rows = shared ? T : 0, zero_row = S + shared_rows;
  MOEX_RETURN_IF_ERROR(m.back.Reserve((zero_row + 1) * row_bf16, rank, "combine rows"));
  if (shared && T > 0) {
    const int64_t Fs = m.shared_width;
    const int64_t n1s = (spec.shared_mlp.gated() ? 2 : 1) * Fs;
    MOEX_RETURN_IF_ERROR(m.shared_gate_up.Reserve(T * n1s * 2, rank, "shared gate/up"));
    MOEX_RETURN_IF_ERROR(m.shared_act.Reserve(T * Fs * 2, rank, "shared activation"));
    const int32_t off[2] = {0, static_cast<int32_t>(T)};
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(m.shared_offsets.get(), off, sizeof(off), cudaMemcpyHostToDevice, stream),
                              rank, "shared offsets"));
    const void* w1 = m.shared_w1.get();
    const void* w2 = m.shared_w2.get();
    MOEX_RETURN_IF_ERROR(m.shared_gemm->Run(m.xb.get(), &w1, m.shared_offsets.get<int32_t>(), 1, static_cast<int>(n1s),
                                            static_cast<int>(H), Dtype::kBF16, m.shared_gate_up.get(), stream));
    MOEX_RETURN_IF_ERROR(
        ActivateRows(spec.shared_mlp, m.shared_gate_up.get(), T, Fs, nullptr, nullptr, 0, m.shared_act.get(), stream));
    MOEX_RETURN_IF_ERROR(m.shared_gemm->Run(m.shared_act.get(), &w2, m.shared_offsets.get<int32_t>(), 1,
                                            static_cast<int>(H), static_cast<int>(Fs), Dtype::kBF16,
                                            m.back.bytes() + S * row_bf16, stream));
  }
  MOEX_RETURN_IF_ERROR(
      Cuda(cudaMemsetAsync(m.back.bytes() + zero_row * row_bf16, 0, row_bf16, stream), rank, "clear the pad row"));
  MOEX_RETURN_IF_ERROR(m.Sync("experts"));
  stats->expert_seconds = Since(start);

  // Combine: partial rows home, then each token's rows summed in rank
  // order, its shared expert's row last, in fp32.
  start = std::chrono::steady_clock::now();
  MOEX_RETURN_IF_ERROR(m.nccl->AllToAllV(m.partial.get(), recv_row_bytes, m.back.get(), send_row_bytes, deadline));
  for (int d = 0; d < W; ++d) {
    if (d != rank) stats->combine_bytes += recv_row_bytes[d];
  }
  const int64_t C = std::min<int64_t>(k, W) + (shared ? 1 : 0);
  m.comb_idx_h.assign(T * C, static_cast<int32_t>(zero_row));
  m.comb_w_h.assign(T * C, 1.0f);
  for (int64_t t = 0; t < T; ++t) {
    int64_t c = 0;
    for (int d = 0; d < W; ++d) {
      if (m.back_row[t * W + d] >= 0) m.comb_idx_h[t * C + c++] = static_cast<int32_t>(m.back_row[t * W + d]);
    }
    if (shared) m.comb_idx_h[t * C + c] = static_cast<int32_t>(S + t);
  }
  MOEX_RETURN_IF_ERROR(Upload(m.comb_idx_h, &m.comb_idx, stream, rank, "combine rows"));
  MOEX_RETURN_IF_ERROR(Upload(m.comb_w_h, &m.comb_w, stream, rank, "combine weights"));
  MOEX_RETURN_IF_ERROR(m.y.Reserve(T * H * 4, rank, "output"));
  y->shape = {T, H};
  y->values.resize(T * H);
  if (T > 0) {
    kernels::cuda::UnpermuteArgs u;
    u.rows = m.back.get(), u.row_of_pair = m.comb_idx.get<int32_t>(), u.topk_weights = m.comb_w.get<float>();
    u.num_tokens = static_cast<int>(T), u.top_k = static_cast<int>(C), u.hidden = static_cast<int>(H);
    u.dtype = Dtype::kBF16, u.out_dtype = Dtype::kF32, u.y = m.y.get();
    MOEX_RETURN_IF_ERROR(kernels::cuda::Unpermute(u, stream));
    MOEX_RETURN_IF_ERROR(Cuda(cudaMemcpyAsync(y->values.data(), m.y.get(), T * H * 4, cudaMemcpyDeviceToHost, stream),
                              rank, "download output"));
    MOEX_RETURN_IF_ERROR(m.Sync("combine"));
  }
  stats->combine_seconds = Since(start);
  return absl::OkStatus();
}

}  // namespace moex::ep
