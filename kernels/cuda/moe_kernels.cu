#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_bf16.h>

#include <cfloat>

#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::kernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxExperts = 1024;
constexpr int kMaxTopK = 8;
constexpr int kMaxCombine = 16;  // rows one Unpermute output may sum
constexpr int kMaxGroups = 64;
constexpr int kWarpsPerBlock = 4;

absl::Status CudaError(cudaError_t code, const char* what) {
  if (code == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorString(code));
}

__device__ float WarpMax(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ float WarpSum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The larger (value, index) pair, ties to the lower index: the CPU router's rule.
__device__ void WarpArgMax(float* value, int* index) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    float v = __shfl_xor_sync(0xffffffffu, *value, o);
    int i = __shfl_xor_sync(0xffffffffu, *index, o);
    if (v > *value || (v == *value && i >= 0 && (*index < 0 || i < *index))) {
      *value = v;
      *index = i;
    }
  }
}

// One warp per token; shared memory per warp: score[E], choice[E],
// group scores, kept groups.
__global__ void RouteKernel(RouteArgs a) {
  extern __shared__ float shared[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int t = blockIdx.x * kWarpsPerBlock + warp;
  const int E = a.num_experts;
  float* score = shared + warp * (2 * E + 2 * kMaxGroups);
  float* choice = score + E;
  float* group_score = choice + E;
  float* kept = group_score + kMaxGroups;
  if (t >= a.num_tokens) return;  // whole warps leave together
  const float* row = a.logits + static_cast<size_t>(t) * E;
  // The logit bias (gpt-oss) is part of the logit: added in fp32 before
  // anything else, as the CPU layer adds it to its logits.
  auto logit = [&](int e) { return row[e] + (a.logit_bias != nullptr ? a.logit_bias[e] : 0.0f); };
  if (a.scoring == Scoring::kSoftmax) {
    float m = -FLT_MAX;
    for (int e = lane; e < E; e += kWarp) m = fmaxf(m, logit(e));
    m = WarpMax(m);
    float sum = 0;
    for (int e = lane; e < E; e += kWarp) {
      float v = __expf(logit(e) - m);
      score[e] = v;
      sum += v;
    }
    sum = WarpSum(sum);
    for (int e = lane; e < E; e += kWarp) {
      score[e] /= sum;
      choice[e] = score[e];
    }
  } else {
    // Without a correction bias or groups the choice is the logit itself:
    // the scores' order, without the ties a float score makes where it
    // saturates (the CPU router's rule).
    const bool by_logit = a.bias == nullptr && a.groups == 1;
    for (int e = lane; e < E; e += kWarp) {
      const float x = logit(e);
      // sqrtsoftplus: sqrt(log(1 + e^x)) in the CPU router's overflow-free
      // form, with the accurate expf/log1pf (routing is not the hot path).
      const float s = a.scoring == Scoring::kSigmoid
                          ? 1.0f / (1.0f + __expf(-x))
                          : sqrtf((x < 0.0f ? 0.0f : x) + log1pf(expf(-fabsf(x))));
      score[e] = s;
      choice[e] = by_logit ? x : s + (a.bias != nullptr ? a.bias[e] : 0.0f);
    }
  }
  __syncwarp();
  if (a.groups > 1) {
    const int per_group = E / a.groups;
    for (int g = lane; g < a.groups; g += kWarp) {
      const float* c = choice + g * per_group;
      float first = -FLT_MAX, second = -FLT_MAX;
      for (int i = 0; i < per_group; ++i) {
        if (c[i] > first) {
          second = first;
          first = c[i];
        } else if (c[i] > second) {
          second = c[i];
        }
      }
      group_score[g] = a.scoring != Scoring::kSoftmax && per_group >= 2 ? first + second : first;
      kept[g] = 0;
    }
    __syncwarp();
    if (lane == 0) {
      for (int j = 0; j < a.topk_groups; ++j) {
        int best = -1;
        for (int g = 0; g < a.groups; ++g) {
          if (kept[g] == 0 && (best < 0 || group_score[g] > group_score[best])) best = g;
        }
        kept[best] = 1;
      }
    }
    __syncwarp();
    for (int e = lane; e < E; e += kWarp) {
      if (kept[e / per_group] == 0) choice[e] = -FLT_MAX;
    }
    __syncwarp();
  }
  float total = 0;
  int chosen[kMaxTopK];
  for (int j = 0; j < a.top_k; ++j) {
    float best = -FLT_MAX;
    int index = -1;
    for (int e = lane; e < E; e += kWarp) {
      if (choice[e] > best || (index < 0 && choice[e] >= best)) {
        best = choice[e];
        index = e;
      }
    }
    WarpArgMax(&best, &index);
    chosen[j] = index;
    total += score[index];
    __syncwarp();
    if (lane == 0) choice[index] = -INFINITY;  // taken
    __syncwarp();
  }
  if (lane == 0) {
    for (int j = 0; j < a.top_k; ++j) {
      float w = score[chosen[j]];
      if (a.renormalize) w /= (total + 1e-20f);
      a.topk_idx[static_cast<size_t>(t) * a.top_k + j] = chosen[j];
      a.topk_weights[static_cast<size_t>(t) * a.top_k + j] = w * a.scale;
    }
  }
}

__global__ void IotaKernel(int32_t* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = i;
}

__global__ void ZeroKernel(int32_t* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = 0;
}

__global__ void CountKernel(const int32_t* expert_of_pair, int pairs, int32_t* counts) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += gridDim.x * blockDim.x) {
    atomicAdd(&counts[expert_of_pair[i]], 1);
  }
}

// sorted_pairs[r] is the pair that goes to row r: row_of_pair is its inverse.
__global__ void InvertKernel(const int32_t* sorted_pairs, int pairs, int32_t* row_of_pair) {
  for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < pairs; r += gridDim.x * blockDim.x) {
    row_of_pair[sorted_pairs[r]] = r;
  }
}

// One block per token: its row is read once and written to each of its k
// permuted rows, 16 bytes at a time when the row allows it (several loads
// in flight per thread before the first store).
__global__ void ScatterKernel(const char* __restrict__ x, const int32_t* __restrict__ row_of_pair, int tokens,
                              int top_k, size_t row_bytes, bool vector16, char* __restrict__ permuted) {
  __shared__ int32_t rows[kMaxTopK];
  for (int t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();
    if (threadIdx.x < top_k) rows[threadIdx.x] = row_of_pair[static_cast<size_t>(t) * top_k + threadIdx.x];
    __syncthreads();
    const char* from = x + static_cast<size_t>(t) * row_bytes;
    if (vector16) {
      constexpr int kUnroll = 4;
      const int4* f = reinterpret_cast<const int4*>(from);
      const size_t n = row_bytes / 16;
      for (size_t base = threadIdx.x; base < n; base += static_cast<size_t>(blockDim.x) * kUnroll) {
        int4 v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const size_t i = base + static_cast<size_t>(u) * blockDim.x;
          if (i < n) v[u] = f[i];
        }
        for (int j = 0; j < top_k; ++j) {
          int4* d = reinterpret_cast<int4*>(permuted + static_cast<size_t>(rows[j]) * row_bytes);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const size_t i = base + static_cast<size_t>(u) * blockDim.x;
            if (i < n) d[i] = v[u];
          }
        }
      }
    } else {
      for (size_t i = threadIdx.x; i < row_bytes; i += blockDim.x) {
        const char v = from[i];
        for (int j = 0; j < top_k; ++j) permuted[static_cast<size_t>(rows[j]) * row_bytes + i] = v;
      }
    }
  }
}

// dst row r = src row index[r], 16 bytes at a time when rows allow it.
__global__ void GatherRowsKernel(const char* __restrict__ src, const int32_t* __restrict__ index, int rows,
                                 size_t row_bytes, bool vector16, char* __restrict__ dst) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const char* from = src + static_cast<size_t>(index[r]) * row_bytes;
    char* to = dst + static_cast<size_t>(r) * row_bytes;
    if (vector16) {
      for (size_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x) {
        reinterpret_cast<int4*>(to)[i] = reinterpret_cast<const int4*>(from)[i];
      }
    } else {
      for (size_t i = threadIdx.x; i < row_bytes; i += blockDim.x) to[i] = from[i];
    }
  }
}

template <typename T>
__device__ float Load(const T* p, size_t i);
template <>
__device__ float Load<float>(const float* p, size_t i) { return p[i]; }
template <>
__device__ float Load<__nv_bfloat16>(const __nv_bfloat16* p, size_t i) { return __bfloat162float(p[i]); }
template <typename T>
__device__ void Store(T* p, size_t i, float v);
template <>
__device__ void Store<float>(float* p, size_t i, float v) { p[i] = v; }
template <>
__device__ void Store<__nv_bfloat16>(__nv_bfloat16* p, size_t i, float v) { p[i] = __float2bfloat16(v); }

// 16 bytes of one row per thread: 8 bf16 or 4 fp32 elements, kept raw
// until summed so that all k rows' loads are in flight in few registers.
template <typename T>
constexpr int kChunk = 16 / static_cast<int>(sizeof(T));

template <typename T>
__device__ void AddChunk(const int4& raw, float w, float* sum);
template <>
__device__ void AddChunk<float>(const int4& raw, float w, float* sum) {
  const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) sum[i] += w * f[i];
}
template <>
__device__ void AddChunk<__nv_bfloat16>(const int4& raw, float w, float* sum) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    sum[2 * i] += w * f.x;
    sum[2 * i + 1] += w * f.y;
  }
}

template <int N>
__device__ void StoreChunk(float* p, const float* v) {
#pragma unroll
  for (int i = 0; i < N; i += 4) reinterpret_cast<float4*>(p)[i / 4] = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
}
template <int N>
__device__ void StoreChunk(__nv_bfloat16* p, const float* v) {
  __nv_bfloat162 h[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  if constexpr (N == 8) {
    *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(h);
  } else {
    *reinterpret_cast<int2*>(p) = *reinterpret_cast<const int2*>(h);
  }
}

// One block per token: the weighted sum of its k rows, in j order, in fp32.
// `vectorised`: rows are whole 16-byte chunks and the buffers aligned, so
// each thread loads 16 bytes of every row (all k in flight) before summing.
template <typename In, typename Out>
__global__ void __launch_bounds__(128) UnpermuteKernel(const In* __restrict__ rows,
                                                       const int32_t* __restrict__ row_of_pair,
                                                       const float* __restrict__ weights, int tokens, int top_k,
                                                       int hidden, bool vectorised, Out* __restrict__ y) {
  constexpr int N = kChunk<In>;
  __shared__ int32_t source[kMaxCombine];
  __shared__ float weight[kMaxCombine];
  for (int t = blockIdx.x; t < tokens; t += gridDim.x) {
    __syncthreads();
    if (threadIdx.x < top_k) {
      const size_t pair = static_cast<size_t>(t) * top_k + threadIdx.x;
      source[threadIdx.x] = row_of_pair[pair];
      weight[threadIdx.x] = weights[pair];
    }
    __syncthreads();
    if (vectorised) {
      for (int h = threadIdx.x * N; h < hidden; h += blockDim.x * N) {
        int4 raw[kMaxTopK];
#pragma unroll
        for (int j = 0; j < kMaxTopK; ++j) {
          if (j < top_k) raw[j] = *reinterpret_cast<const int4*>(rows + static_cast<size_t>(source[j]) * hidden + h);
        }
        float sum[N] = {};
#pragma unroll
        for (int j = 0; j < kMaxTopK; ++j) {
          if (j < top_k) AddChunk<In>(raw[j], weight[j], sum);
        }
        StoreChunk<N>(y + static_cast<size_t>(t) * hidden + h, sum);
      }
    } else {
      for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
        float sum = 0;
        for (int j = 0; j < top_k; ++j) {
          sum += weight[j] * Load(rows, static_cast<size_t>(source[j]) * hidden + h);
        }
        Store(y, static_cast<size_t>(t) * hidden + h, sum);
      }
    }
  }
}

// A counter-based hash (splitmix64) to [lo, hi): the same values for the
// same seed on any GPU.
template <typename T>
__global__ void FillUniformKernel(T* out, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    Store(out, i, lo + (hi - lo) * u);
  }
}

int Blocks(size_t n, int threads) { return static_cast<int>(std::min<size_t>((n + threads - 1) / threads, 65535)); }

size_t Align(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The workspace's parts: pair indices (in, sorted), expert keys (sorted),
// counts, and CUB's own temporary storage.
struct Parts {
  size_t pair_bytes, counts_bytes, cub_bytes;
};

Parts PartsFor(int max_pairs, int num_experts) {
  Parts p{};
  p.pair_bytes = Align(sizeof(int32_t) * static_cast<size_t>(std::max(max_pairs, 1)));
  p.counts_bytes = Align(sizeof(int32_t) * static_cast<size_t>(num_experts + 1));
  size_t sort_bytes = 0, scan_bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), std::max(max_pairs, 1));
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                static_cast<int32_t*>(nullptr), num_experts + 1);
  p.cub_bytes = Align(std::max(sort_bytes, scan_bytes));
  return p;
}

}  // namespace

absl::Status DeviceAvailable() {
  int count = 0;
  cudaError_t code = cudaGetDeviceCount(&count);
  if (code != cudaSuccess) return absl::UnavailableError(std::string("no CUDA device: ") + cudaGetErrorString(code));
  if (count == 0) return absl::UnavailableError("no CUDA device: the driver reports none");
  return absl::OkStatus();
}

absl::Status Route(const RouteArgs& a, cudaStream_t stream) {
  if (a.num_experts < 1 || a.num_experts > kMaxExperts || a.top_k < 1 || a.top_k > kMaxTopK ||
      a.top_k > a.num_experts) {
    return absl::InvalidArgumentError("cuda Route: experts must be in [1, 1024] and top-k in [1, min(8, experts)], got " +
                                      std::to_string(a.num_experts) + " and " + std::to_string(a.top_k));
  }
  if (a.groups < 1 || a.groups > kMaxGroups || a.num_experts % a.groups != 0 || a.topk_groups < 1 ||
      a.topk_groups > a.groups || a.top_k > a.topk_groups * (a.num_experts / a.groups)) {
    return absl::InvalidArgumentError("cuda Route: " + std::to_string(a.groups) + " groups (top " +
                                      std::to_string(a.topk_groups) + ") do not fit " + std::to_string(a.num_experts) +
                                      " experts and top-" + std::to_string(a.top_k));
  }
  if (a.num_tokens == 0) return absl::OkStatus();
  const size_t shared = sizeof(float) * kWarpsPerBlock * (2 * a.num_experts + 2 * kMaxGroups);
  const int blocks = (a.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  RouteKernel<<<blocks, kWarpsPerBlock * kWarp, shared, stream>>>(a);
  return CudaError(cudaGetLastError(), "cuda Route launch");
}

size_t PermuteWorkspaceBytes(int max_pairs, int num_experts) {
  Parts p = PartsFor(max_pairs, num_experts);
  return 3 * p.pair_bytes + p.counts_bytes + p.cub_bytes;
}

absl::Status Permute(const PermuteArgs& a, cudaStream_t stream) {
  const int pairs = a.num_tokens * a.top_k;
  if (a.num_experts < 1 || a.top_k < 1 || a.top_k > kMaxTopK || a.hidden < 1 || a.num_tokens < 0) {
    return absl::InvalidArgumentError("cuda Permute: bad shape (" + std::to_string(a.num_tokens) + " tokens, top-" +
                                      std::to_string(a.top_k) + ", hidden " + std::to_string(a.hidden) + ", " +
                                      std::to_string(a.num_experts) + " experts)");
  }
  if (a.workspace_bytes < PermuteWorkspaceBytes(pairs, a.num_experts)) {
    return absl::InvalidArgumentError("cuda Permute: the workspace holds " + std::to_string(a.workspace_bytes) +
                                      " bytes, " + std::to_string(PermuteWorkspaceBytes(pairs, a.num_experts)) +
                                      " needed (PermuteWorkspaceBytes)");
  }
  Parts p = PartsFor(pairs, a.num_experts);
  char* w = static_cast<char*>(a.workspace);
  int32_t* pair_ids = reinterpret_cast<int32_t*>(w);
  int32_t* sorted_pairs = reinterpret_cast<int32_t*>(w + p.pair_bytes);
  int32_t* sorted_experts = reinterpret_cast<int32_t*>(w + 2 * p.pair_bytes);
  int32_t* counts = reinterpret_cast<int32_t*>(w + 3 * p.pair_bytes);
  void* cub_storage = w + 3 * p.pair_bytes + p.counts_bytes;
  size_t cub_bytes = p.cub_bytes;
  ZeroKernel<<<Blocks(a.num_experts + 1, 256), 256, 0, stream>>>(counts, a.num_experts + 1);
  if (pairs > 0) {
    IotaKernel<<<Blocks(pairs, 256), 256, 0, stream>>>(pair_ids, pairs);
    CountKernel<<<Blocks(pairs, 256), 256, 0, stream>>>(a.topk_idx, pairs, counts);
    // Stable: pairs of one expert keep token order.
    int end_bit = 1;
    while ((1 << end_bit) <= a.num_experts) ++end_bit;
    cudaError_t sorted = cub::DeviceRadixSort::SortPairs(cub_storage, cub_bytes, a.topk_idx, sorted_experts, pair_ids,
                                                         sorted_pairs, pairs, 0, end_bit, stream);
    if (sorted != cudaSuccess) return CudaError(sorted, "cuda Permute: sort");
    InvertKernel<<<Blocks(pairs, 256), 256, 0, stream>>>(sorted_pairs, pairs, a.row_of_pair);
    const size_t row_bytes = static_cast<size_t>(a.hidden) * (a.dtype == Dtype::kF32 ? 4 : 2);
    auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    const bool vector16 = row_bytes % 16 == 0 && aligned(a.x) && aligned(a.permuted);
    ScatterKernel<<<std::min(a.num_tokens, 65535), 256, 0, stream>>>(static_cast<const char*>(a.x), a.row_of_pair,
                                                                     a.num_tokens, a.top_k, row_bytes, vector16,
                                                                     static_cast<char*>(a.permuted));
  }
  cub_bytes = p.cub_bytes;
  cudaError_t scanned =
      cub::DeviceScan::ExclusiveSum(cub_storage, cub_bytes, counts, a.expert_offsets, a.num_experts + 1, stream);
  if (scanned != cudaSuccess) return CudaError(scanned, "cuda Permute: scan");
  return CudaError(cudaGetLastError(), "cuda Permute launch");
}

absl::Status Unpermute(const UnpermuteArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return absl::OkStatus();
  if (a.top_k < 1 || a.hidden < 1 || a.num_tokens < 0) return absl::InvalidArgumentError("cuda Unpermute: bad shape");
  if (a.top_k > kMaxCombine) return absl::InvalidArgumentError("cuda Unpermute: more than 16 rows a token");
  const int blocks = std::min(a.num_tokens, 65535), threads = 128;
  const bool in32 = a.dtype == Dtype::kF32, out32 = a.out_dtype == Dtype::kF32;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // Whole 16-byte chunks of input.
  const int chunk = in32 ? 4 : 8;
  const bool vector8 = a.hidden % chunk == 0 && aligned(a.rows) && aligned(a.y) && a.top_k <= kMaxTopK;
  if (in32 && out32) {
    UnpermuteKernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(a.rows), a.row_of_pair, a.topk_weights,
                                                    a.num_tokens, a.top_k, a.hidden, vector8, static_cast<float*>(a.y));
  } else if (in32) {
    UnpermuteKernel<<<blocks, threads, 0, stream>>>(static_cast<const float*>(a.rows), a.row_of_pair, a.topk_weights,
                                                    a.num_tokens, a.top_k, a.hidden, vector8,
                                                    static_cast<__nv_bfloat16*>(a.y));
  } else if (out32) {
    UnpermuteKernel<<<blocks, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(a.rows), a.row_of_pair,
                                                    a.topk_weights, a.num_tokens, a.top_k, a.hidden, vector8,
                                                    static_cast<float*>(a.y));
  } else {
    UnpermuteKernel<<<blocks, threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(a.rows), a.row_of_pair,
                                                    a.topk_weights, a.num_tokens, a.top_k, a.hidden, vector8,
                                                    static_cast<__nv_bfloat16*>(a.y));
  }
  return CudaError(cudaGetLastError(), "cuda Unpermute launch");
}

template <typename In, typename Out>
__global__ void ConvertKernel(const In* in, size_t n, Out* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    Store(out, i, Load(in, i));
  }
}

absl::Status GatherRows(const void* src, const int32_t* index, int rows, size_t row_bytes, void* dst,
                        cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  if (rows < 0 || row_bytes == 0) return absl::InvalidArgumentError("cuda GatherRows: bad shape");
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool vector16 = row_bytes % 16 == 0 && aligned(src) && aligned(dst);
  GatherRowsKernel<<<std::min(rows, 65535), 128, 0, stream>>>(static_cast<const char*>(src), index, rows, row_bytes,
                                                              vector16, static_cast<char*>(dst));
  return CudaError(cudaGetLastError(), "cuda GatherRows launch");
}

absl::Status Convert(const void* in, Dtype in_dtype, size_t count, void* out, Dtype out_dtype, cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  const int blocks = Blocks(count, 256);
  if (in_dtype == Dtype::kF32 && out_dtype == Dtype::kBF16) {
    ConvertKernel<<<blocks, 256, 0, stream>>>(static_cast<const float*>(in), count, static_cast<__nv_bfloat16*>(out));
  } else if (in_dtype == Dtype::kBF16 && out_dtype == Dtype::kF32) {
    ConvertKernel<<<blocks, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(in), count, static_cast<float*>(out));
  } else {
    const size_t bytes = count * (in_dtype == Dtype::kF32 ? 4 : 2);
    return CudaError(cudaMemcpyAsync(out, in, bytes, cudaMemcpyDeviceToDevice, stream), "cuda Convert copy");
  }
  return CudaError(cudaGetLastError(), "cuda Convert launch");
}

absl::Status FillUniform(void* data, size_t count, Dtype dtype, float lo, float hi, uint64_t seed,
                         cudaStream_t stream) {
  if (count == 0) return absl::OkStatus();
  const int blocks = Blocks(count, 256);
  if (dtype == Dtype::kF32) {
    FillUniformKernel<<<blocks, 256, 0, stream>>>(static_cast<float*>(data), count, lo, hi, seed);
  } else {
    FillUniformKernel<<<blocks, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count, lo, hi, seed);
  }
  return CudaError(cudaGetLastError(), "cuda FillUniform launch");
}

}  // namespace moex::kernels::cuda
