// The experts' activation (Activate, SwiGlu) and their per-expert biases
// (AddExpertBias): elementwise kernels on the expert-major rows, apart from
// moe_kernels.cu to keep each file to one subject. The few helpers below
// repeat moe_kernels.cu's, which are private to it.
#include <cuda_bf16.h>

#include <algorithm>
#include <string>

#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::kernels::cuda {
namespace {

absl::Status CudaError(cudaError_t code, const char* what) {
  if (code == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(code));
}

int Blocks(size_t n, int threads) { return static_cast<int>(std::min<size_t>((n + threads - 1) / threads, 65535)); }

__device__ float Load(const float* p, size_t i) { return p[i]; }
__device__ float Load(const __nv_bfloat16* p, size_t i) { return __bfloat162float(p[i]); }
__device__ void Store(float* p, size_t i, float v) { p[i] = v; }
__device__ void Store(__nv_bfloat16* p, size_t i, float v) { p[i] = __float2bfloat16(v); }

// The expert of row r: the last e with offsets[e] <= r, which for r below
// offsets[E] is the one whose rows [offsets[e], offsets[e + 1]) hold r
// (idle experts have empty ranges and are passed over).
__device__ int ExpertOfRow(const int32_t* offsets, int num_experts, size_t r) {
  int lo = 0, hi = num_experts;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (static_cast<size_t>(offsets[mid]) <= r) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The clamps written as the CPU kernel's std::min and std::clamp compare,
// so that a NaN goes through both the same way.
__device__ float AtMost(float v, float hi) { return hi < v ? hi : v; }
__device__ float Within(float v, float limit) { return v < -limit ? -limit : (limit < v ? limit : v); }

template <Activation kKind>
__device__ float Activated(float g, float u, float limit, float alpha) {
  if constexpr (kKind == Activation::kSilu) {
    if (limit > 0) {
      g = AtMost(g, limit);
      u = Within(u, limit);
    }
    return g / (1.0f + __expf(-g)) * u;
  } else if constexpr (kKind == Activation::kSwigluOai) {
    g = AtMost(g, limit);
    u = Within(u, limit);
    return (u + 1.0f) * (g / (1.0f + __expf(-alpha * g)));
  } else {
    const float a = u < 0.0f ? 0.0f : u;
    return a * a;
  }
}

template <typename T, Activation kKind>
__global__ void ActivationKernel(const T* __restrict__ in, int rows, int width, float limit, float alpha,
                                 const float* __restrict__ bias, const int32_t* __restrict__ offsets,
                                 int num_experts, T* __restrict__ out) {
  constexpr bool kGated = kKind != Activation::kRelu2;
  const size_t in_width = (kGated ? 2 : 1) * static_cast<size_t>(width), up = kGated ? width : 0;
  const size_t n = static_cast<size_t>(rows) * width;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t r = i / width, f = i % width;
    float g = kGated ? Load(in, r * in_width + f) : 0.0f, u = Load(in, r * in_width + up + f);
    if (bias != nullptr) {
      const float* b = bias + static_cast<size_t>(ExpertOfRow(offsets, num_experts, r)) * in_width;
      if (kGated) g += b[f];
      u += b[up + f];
    }
    Store(out, i, Activated<kKind>(g, u, limit, alpha));
  }
}

template <typename T>
__global__ void AddExpertBiasKernel(T* rows, int num_rows, int width, const float* __restrict__ bias,
                                    const int32_t* __restrict__ offsets, int num_experts) {
  const size_t n = static_cast<size_t>(num_rows) * width;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t r = i / width, f = i % width;
    const int e = ExpertOfRow(offsets, num_experts, r);
    Store(rows, i, Load(rows, i) + bias[static_cast<size_t>(e) * width + f]);
  }
}

template <typename T>
void LaunchActivation(const ActivationArgs& a, int blocks, cudaStream_t stream) {
  const T* in = static_cast<const T*>(a.in);
  T* out = static_cast<T*>(a.out);
  switch (a.kind) {
    case Activation::kSilu:
      ActivationKernel<T, Activation::kSilu><<<blocks, 256, 0, stream>>>(in, a.rows, a.width, a.limit, a.alpha, a.bias,
                                                                         a.expert_offsets, a.num_experts, out);
      break;
    case Activation::kSwigluOai:
      ActivationKernel<T, Activation::kSwigluOai><<<blocks, 256, 0, stream>>>(
          in, a.rows, a.width, a.limit, a.alpha, a.bias, a.expert_offsets, a.num_experts, out);
      break;
    case Activation::kRelu2:
      ActivationKernel<T, Activation::kRelu2><<<blocks, 256, 0, stream>>>(in, a.rows, a.width, a.limit, a.alpha, a.bias,
                                                                          a.expert_offsets, a.num_experts, out);
      break;
  }
}

}  // namespace

absl::Status Activate(const ActivationArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return absl::OkStatus();
  if (a.rows < 0 || a.width < 1) {
    return absl::InvalidArgumentError("cuda Activate: bad shape (" + std::to_string(a.rows) + " rows of width " +
                                      std::to_string(a.width) + ")");
  }
  if (a.bias != nullptr && (a.expert_offsets == nullptr || a.num_experts < 1)) {
    return absl::InvalidArgumentError("cuda Activate: a bias needs the expert offsets of the rows and at least one "
                                      "expert, got " + std::to_string(a.num_experts));
  }
  const int blocks = Blocks(static_cast<size_t>(a.rows) * a.width, 256);
  if (a.dtype == Dtype::kF32) {
    LaunchActivation<float>(a, blocks, stream);
  } else {
    LaunchActivation<__nv_bfloat16>(a, blocks, stream);
  }
  return CudaError(cudaGetLastError(), "cuda Activate launch");
}

absl::Status SwiGlu(const void* gate_up, int rows, int width, Dtype dtype, void* out, cudaStream_t stream) {
  ActivationArgs a;
  a.in = gate_up, a.rows = rows, a.width = width, a.dtype = dtype, a.kind = Activation::kSilu, a.out = out;
  return Activate(a, stream);
}

absl::Status AddExpertBias(void* rows, int num_rows, int width, Dtype dtype, const float* bias,
                           const int32_t* expert_offsets, int num_experts, cudaStream_t stream) {
  if (num_rows < 0 || width < 1 || bias == nullptr || expert_offsets == nullptr || num_experts < 1) {
    return absl::InvalidArgumentError("cuda AddExpertBias: bad arguments (" + std::to_string(num_rows) +
                                      " rows of width " + std::to_string(width) + ", " + std::to_string(num_experts) +
                                      " experts, bias and offsets " +
                                      (bias == nullptr || expert_offsets == nullptr ? "missing" : "given") + ")");
  }
  if (num_rows == 0) return absl::OkStatus();
  const int blocks = Blocks(static_cast<size_t>(num_rows) * width, 256);
  if (dtype == Dtype::kF32) {
    AddExpertBiasKernel<<<blocks, 256, 0, stream>>>(static_cast<float*>(rows), num_rows, width, bias, expert_offsets,
                                                    num_experts);
  } else {
    AddExpertBiasKernel<<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(rows), num_rows, width, bias,
                                                    expert_offsets, num_experts);
  }
  return CudaError(cudaGetLastError(), "cuda AddExpertBias launch");
}

}  // namespace moex::kernels::cuda
