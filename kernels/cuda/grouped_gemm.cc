// Every local expert's projection in one cublasGemmGroupedBatchedEx call.
//
// Row-major out_e [n_e, N] = in_e [n_e, K] . W_e^T is, in cuBLAS's
// column-major terms, out_e^T [N, n_e] = (W_e^T)^T . in_e^T with W_e^T the
// column-major [K, N] view of W_e: op(A) = T on A = W_e (lda K), op(B) = N
// on B = in_e (ldb K), C = out_e (ldc N), m = N, n = n_e, k = K.
#include <utility>

#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::kernels::cuda {
namespace {

absl::Status Cuda(cudaError_t code, const char* what) {
  if (code == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(code));
}

absl::Status Cublas(cublasStatus_t code, const char* what) {
  if (code == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cublasGetStatusString(code));
}

}  // namespace

const char* GemmModeName(GemmMode mode) {
  switch (mode) {
    case GemmMode::kAuto: return "auto";
    case GemmMode::kGroupedCall: return "grouped-call";
    case GemmMode::kPerExpert: return "per-expert";
  }
  return "?";
}

absl::StatusOr<GroupedGemm> GroupedGemm::Create(int max_experts, GemmMode mode) {
  if (max_experts < 1) return absl::InvalidArgumentError("GroupedGemm: max_experts must be >= 1");
  GroupedGemm g;
  g.max_experts_ = max_experts;
  g.mode_ = mode;
  if (absl::Status s = Cublas(cublasCreate(&g.handle_), "cublasCreate"); !s.ok()) return s;
  const size_t bytes = sizeof(void*) * static_cast<size_t>(max_experts);
  if (absl::Status s = Cuda(cudaMalloc(reinterpret_cast<void**>(&g.a_device_), bytes), "cudaMalloc"); !s.ok()) return s;
  if (absl::Status s = Cuda(cudaMalloc(reinterpret_cast<void**>(&g.b_device_), bytes), "cudaMalloc"); !s.ok()) return s;
  if (absl::Status s = Cuda(cudaMalloc(reinterpret_cast<void**>(&g.c_device_), bytes), "cudaMalloc"); !s.ok()) return s;
  g.offsets_.resize(static_cast<size_t>(max_experts) + 1);
  g.a_.reserve(static_cast<size_t>(max_experts));
  g.b_.reserve(static_cast<size_t>(max_experts));
  g.c_.reserve(static_cast<size_t>(max_experts));
  return g;
}

GroupedGemm::GroupedGemm(GroupedGemm&& o) noexcept
    : handle_(std::exchange(o.handle_, nullptr)),
      max_experts_(o.max_experts_),
      mode_(o.mode_),
      last_mode_(o.last_mode_),
      a_device_(std::exchange(o.a_device_, nullptr)),
      b_device_(std::exchange(o.b_device_, nullptr)),
      c_device_(std::exchange(o.c_device_, nullptr)),
      offsets_(std::move(o.offsets_)),
      rows_(std::move(o.rows_)),
      a_(std::move(o.a_)),
      b_(std::move(o.b_)),
      c_(std::move(o.c_)) {}

GroupedGemm::~GroupedGemm() {
  if (a_device_ != nullptr) cudaFree(a_device_);
  if (b_device_ != nullptr) cudaFree(b_device_);
  if (c_device_ != nullptr) cudaFree(c_device_);
  if (handle_ != nullptr) cublasDestroy(handle_);
}

absl::Status GroupedGemm::Run(const void* in, const void* const* weights_host, const int32_t* expert_offsets_device,
                              int num_experts, int n, int k, Dtype dtype, void* out, cudaStream_t stream) {
  if (num_experts < 1 || num_experts > max_experts_ || n < 1 || k < 1) {
    return absl::InvalidArgumentError("GroupedGemm: " + std::to_string(num_experts) + " experts (at most " +
                                      std::to_string(max_experts_) + "), N " + std::to_string(n) + ", K " +
                                      std::to_string(k));
  }
  // The row counts decide the problem sizes: cuBLAS takes them on the host.
  if (absl::Status s = Cuda(cudaMemcpyAsync(offsets_.data(), expert_offsets_device,
                                            sizeof(int32_t) * static_cast<size_t>(num_experts + 1),
                                            cudaMemcpyDeviceToHost, stream),
                            "GroupedGemm: copy the expert offsets");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Cuda(cudaStreamSynchronize(stream), "GroupedGemm: synchronize"); !s.ok()) return s;
  const size_t elem = dtype == Dtype::kF32 ? 4 : 2;
  const cudaDataType_t type = dtype == Dtype::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  rows_.assign(static_cast<size_t>(num_experts), 0);
  a_.clear(), b_.clear(), c_.clear();
  std::vector<int> m_array, n_array, k_array, lda, ldb, ldc, group_size;
  std::vector<cublasOperation_t> trans_a, trans_b;
  std::vector<float> alpha, beta;
  for (int e = 0; e < num_experts; ++e) {
    const int rows = offsets_[e + 1] - offsets_[e];
    rows_[e] = rows;
    if (rows == 0) continue;  // an idle expert is no problem for cuBLAS to solve
    a_.push_back(weights_host[e]);
    b_.push_back(static_cast<const char*>(in) + static_cast<size_t>(offsets_[e]) * k * elem);
    c_.push_back(static_cast<char*>(out) + static_cast<size_t>(offsets_[e]) * n * elem);
    trans_a.push_back(CUBLAS_OP_T), trans_b.push_back(CUBLAS_OP_N);
    m_array.push_back(n), n_array.push_back(rows), k_array.push_back(k);
    lda.push_back(k), ldb.push_back(k), ldc.push_back(n);
    alpha.push_back(1.0f), beta.push_back(0.0f), group_size.push_back(1);
  }
  const int groups = static_cast<int>(a_.size());
  if (groups == 0) return absl::OkStatus();
  if (absl::Status s = Cublas(cublasSetStream(handle_, stream), "cublasSetStream"); !s.ok()) return s;
  const int64_t total_rows = offsets_[num_experts] - offsets_[0];
  last_mode_ = mode_;
  if (mode_ == GemmMode::kAuto) {
    last_mode_ = total_rows >= int64_t{kPerExpertMinRows} * groups ? GemmMode::kPerExpert : GemmMode::kGroupedCall;
  }
  if (last_mode_ == GemmMode::kPerExpert) {
    for (int g = 0; g < groups; ++g) {
      if (absl::Status s = Cublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, n_array[g], k, &alpha[g], a_[g],
                                               type, k, b_[g], type, k, &beta[g], c_[g], type, n, CUBLAS_COMPUTE_32F,
                                               CUBLAS_GEMM_DEFAULT),
                                  "cublasGemmEx");
          !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
  const size_t bytes = sizeof(void*) * static_cast<size_t>(groups);
  for (auto [device, host] : {std::pair<void*, const void*>{a_device_, a_.data()}, {b_device_, b_.data()},
                              {c_device_, c_.data()}}) {
    if (absl::Status s = Cuda(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream),
                              "GroupedGemm: copy the pointer arrays");
        !s.ok()) {
      return s;
    }
  }
  absl::Status s = Cublas(
      cublasGemmGroupedBatchedEx(handle_, trans_a.data(), trans_b.data(), m_array.data(), n_array.data(),
                                 k_array.data(), alpha.data(), a_device_, type, lda.data(), b_device_, type,
                                 ldb.data(), beta.data(), c_device_, type, ldc.data(), groups, group_size.data(),
                                 CUBLAS_COMPUTE_32F),
      "cublasGemmGroupedBatchedEx");
  // The pointer arrays live in members until the next Run (whose first act
  // is to synchronize), so nothing here waits for the GEMMs.
  return s;
}

}  // namespace moex::kernels::cuda
