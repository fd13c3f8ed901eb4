// FP8 rows for dispatch on the GPU: kernels/fp8_rows.h's format, byte for
// byte what the CPU's QuantizeRowsFp8 writes (tests/gpu compares them).
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <string>

#include "moex/kernels/cuda/moe_kernels.h"
#include "moex/kernels/fp8_rows.h"

namespace moex::kernels::cuda {
namespace {

constexpr int kThreads = static_cast<int>(kFp8RowBlock);  // a thread a value of one scale block
static_assert(kThreads % 32 == 0, "whole warps");

__device__ float LoadValue(const void* x, Dtype dtype, size_t i) {
  return dtype == Dtype::kBF16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i])
                               : static_cast<const float*>(x)[i];
}

// Block (row, b): amax over the block's values (at least kFp8MinAmax),
// scale = amax / 448, q = e4m3(x * (448 / amax)), nearest even, saturating.
__global__ void __launch_bounds__(kThreads) QuantizeKernel(QuantizeFp8Args a) {
  __shared__ float warp_max[kThreads / 32];
  const int row = blockIdx.y, block = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int i = block * kThreads + threadIdx.x;
  const size_t at = static_cast<size_t>(row) * a.hidden + i;
  const float v = i < a.hidden ? LoadValue(a.x, a.dtype, at) : 0.0f;
  // fmaxf drops a NaN, as std::fmax does on the CPU.
  float m = fabsf(v);
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) warp_max[warp] = m;
  __syncthreads();
  float amax = kFp8MinAmax;
  for (int w = 0; w < kThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  const float up = __fdiv_rn(kFp8Max, amax);
  if (threadIdx.x == 0) a.scales[static_cast<size_t>(row) * gridDim.x + block] = __fdiv_rn(amax, kFp8Max);
  if (i >= a.hidden) return;
  uint8_t q = static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fmul_rn(v, up), __NV_SATFINITE, __NV_E4M3));
  if ((q & 0x7f) == 0) q = 0;           // -0 is +0, as on the CPU
  if ((q & 0x7f) == 0x7f) q = 0x7f;     // one NaN
  a.q[at] = q;
}

__global__ void DequantizeKernel(const uint8_t* q, const float* scales, int rows, int hidden, Dtype dtype, void* x) {
  const size_t n = static_cast<size_t>(rows) * hidden, blocks = (hidden + kThreads - 1) / kThreads;
  for (size_t at = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; at < n;
       at += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = at / hidden, i = at % hidden;
    const __half_raw raw = __nv_cvt_fp8_to_halfraw(q[at], __NV_E4M3);
    const float v = __fmul_rn(__half2float(__half(raw)), scales[row * blocks + i / kThreads]);
    if (dtype == Dtype::kBF16) {
      static_cast<__nv_bfloat16*>(x)[at] = __float2bfloat16(v);
    } else {
      static_cast<float*>(x)[at] = v;
    }
  }
}

absl::Status LaunchError(const char* what) {
  const cudaError_t code = cudaGetLastError();
  if (code == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(code));
}

}  // namespace

absl::Status QuantizeRowsFp8(const QuantizeFp8Args& a, cudaStream_t stream) {
  if (a.rows < 0 || a.hidden < 0 || (a.rows > 0 && a.hidden > 0 && (!a.x || !a.q || !a.scales))) {
    return absl::InvalidArgumentError("cuda QuantizeRowsFp8: " + std::to_string(a.rows) + " rows of " +
                                      std::to_string(a.hidden) + " values need x, q and scales");
  }
  if (a.rows == 0 || a.hidden == 0) return absl::OkStatus();
  if (a.rows > 65535) {
    return absl::InvalidArgumentError("cuda QuantizeRowsFp8: " + std::to_string(a.rows) +
                                      " rows in one call; at most 65535");
  }
  const dim3 grid(static_cast<unsigned>(Fp8RowScales(a.hidden)), static_cast<unsigned>(a.rows));
  QuantizeKernel<<<grid, kThreads, 0, stream>>>(a);
  return LaunchError("cuda QuantizeRowsFp8 launch");
}

absl::Status DequantizeRowsFp8(const uint8_t* q, const float* scales, int rows, int hidden, Dtype dtype, void* x,
                               cudaStream_t stream) {
  if (rows < 0 || hidden < 0 || (rows > 0 && hidden > 0 && (!q || !scales || !x))) {
    return absl::InvalidArgumentError("cuda DequantizeRowsFp8: " + std::to_string(rows) + " rows of " +
                                      std::to_string(hidden) + " values need q, scales and x");
  }
  if (rows == 0 || hidden == 0) return absl::OkStatus();
  const size_t n = static_cast<size_t>(rows) * hidden;
  const unsigned grid = static_cast<unsigned>(std::min<size_t>((n + 255) / 256, 65535));
  DequantizeKernel<<<grid, 256, 0, stream>>>(q, scales, rows, hidden, dtype, x);
  return LaunchError("cuda DequantizeRowsFp8 launch");
}

}  // namespace moex::kernels::cuda
