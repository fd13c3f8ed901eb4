// The CUDA kernels on DeepSeek-V3 expert shapes, each beside a baseline
// timed in the same run (CUDA events, median of the repetitions):
//   permute and un-permute: bandwidth against cudaMemcpyAsync (device to
//     device) of the same bytes (target >= 0.8);
//   grouped expert GEMM (the gate/up projection of 32 local experts):
//     TFLOP/s against one dense cublasGemmEx with the same FLOPs (target >= 0.8);
//   the whole single-GPU layer forward (router GEMM, routing, permute,
//     gate/up grouped GEMM, SwiGLU, down grouped GEMM, weighted un-permute):
//     its time, for bench/gpu_layer_torch.py to set beside PyTorch's.
// Inputs and weights are uniform random bf16 made on the device.
//
//   moex_bench_gpu [--tokens 4096] [--top-k 8] [--hidden 7168] [--width 2048]
//       [--experts 32] [--reps 20] [--json FILE]
//
// Exits 2, saying why, where no GPU is visible.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "moex/kernels/cuda/moe_kernels.h"
#include "nlohmann/json.hpp"

namespace {

using moex::kernels::cuda::Dtype;

#define CHECK_CUDA(call)                                                                         \
  do {                                                                                           \
    cudaError_t code_ = (call);                                                                  \
    if (code_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "moex_bench_gpu: %s: %s\n", #call, cudaGetErrorString(code_));        \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "moex_bench_gpu: %s: %s\n", what, std::string(status.message()).c_str());
    std::exit(1);
  }
}

// Median milliseconds of `reps` runs of `body` after 3 warm-up runs.
double Time(int reps, const std::function<void()>& body) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) body();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(start));
    body();
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void* Alloc(size_t bytes) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
  CHECK_CUDA(cudaMemset(p, 0, std::max<size_t>(bytes, 1)));
  return p;
}

// `count` bf16 values uniform in [-scale, scale).
void* Random(size_t count, float scale, uint64_t seed) {
  void* p = Alloc(count * 2);
  Check(moex::kernels::cuda::FillUniform(p, count, Dtype::kBF16, -scale, scale, seed, nullptr), "FillUniform");
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  int tokens = 4096, top_k = 8, hidden = 7168, width = 2048, experts = 32, reps = 20;
  std::string json;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    int value = std::atoi(argv[i + 1]);
    if (flag == "--tokens") tokens = value;
    else if (flag == "--top-k") top_k = value;
    else if (flag == "--hidden") hidden = value;
    else if (flag == "--width") width = value;
    else if (flag == "--experts") experts = value;
    else if (flag == "--reps") reps = value;
    else if (flag == "--json") json = argv[i + 1];
    else {
      std::fprintf(stderr, "moex_bench_gpu: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  absl::Status gpu = moex::kernels::cuda::DeviceAvailable();
  if (!gpu.ok()) {
    std::fprintf(stderr, "moex_bench_gpu: %s; nothing measured\n", std::string(gpu.message()).c_str());
    return 2;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int pairs = tokens * top_k;
  // Routing: uniform over the local experts, k distinct per token.
  std::vector<int32_t> idx(static_cast<size_t>(pairs));
  std::mt19937_64 rng(1);
  for (int t = 0; t < tokens; ++t) {
    std::vector<int32_t> all(experts);
    for (int e = 0; e < experts; ++e) all[e] = e;
    std::shuffle(all.begin(), all.end(), rng);
    std::copy(all.begin(), all.begin() + std::min(top_k, experts), idx.begin() + static_cast<size_t>(t) * top_k);
  }
  std::vector<float> w(static_cast<size_t>(pairs), 1.0f / static_cast<float>(top_k));
  const size_t row = static_cast<size_t>(hidden) * 2;  // bf16
  void* x = Random(static_cast<size_t>(tokens) * hidden, 1.0f, 1);
  void* permuted = Alloc(static_cast<size_t>(pairs) * row);
  void* y = Alloc(static_cast<size_t>(tokens) * row);
  void* copy = Alloc(static_cast<size_t>(pairs) * row);
  auto* d_idx = static_cast<int32_t*>(Alloc(sizeof(int32_t) * pairs));
  auto* d_w = static_cast<float*>(Alloc(sizeof(float) * pairs));
  auto* d_row = static_cast<int32_t*>(Alloc(sizeof(int32_t) * pairs));
  auto* d_off = static_cast<int32_t*>(Alloc(sizeof(int32_t) * (experts + 1)));
  CHECK_CUDA(cudaMemcpy(d_idx, idx.data(), sizeof(int32_t) * pairs, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_w, w.data(), sizeof(float) * pairs, cudaMemcpyHostToDevice));
  const size_t ws_bytes = moex::kernels::cuda::PermuteWorkspaceBytes(pairs, experts);
  void* ws = Alloc(ws_bytes);

  moex::kernels::cuda::PermuteArgs p;
  p.x = x, p.topk_idx = d_idx, p.num_tokens = tokens, p.top_k = top_k, p.hidden = hidden, p.num_experts = experts;
  p.dtype = Dtype::kBF16, p.permuted = permuted, p.row_of_pair = d_row, p.expert_offsets = d_off;
  p.workspace = ws, p.workspace_bytes = ws_bytes;
  // Bytes a permutation moves: every permuted row read once and written once.
  const double permute_bytes = 2.0 * static_cast<double>(pairs) * static_cast<double>(row);
  const double permute_ms = Time(reps, [&] { Check(moex::kernels::cuda::Permute(p, nullptr), "Permute"); });
  const double copy_ms = Time(reps, [&] {
    CHECK_CUDA(cudaMemcpyAsync(copy, permuted, static_cast<size_t>(pairs) * row, cudaMemcpyDeviceToDevice));
  });
  moex::kernels::cuda::UnpermuteArgs u;
  u.rows = permuted, u.row_of_pair = d_row, u.topk_weights = d_w, u.num_tokens = tokens, u.top_k = top_k;
  u.hidden = hidden, u.dtype = Dtype::kBF16, u.out_dtype = Dtype::kBF16, u.y = y;
  const double unpermute_bytes = static_cast<double>(pairs) * row + static_cast<double>(tokens) * row;
  const double unpermute_ms = Time(reps, [&] { Check(moex::kernels::cuda::Unpermute(u, nullptr), "Unpermute"); });
  const double unpermute_copy_ms = Time(reps, [&] {
    CHECK_CUDA(cudaMemcpyAsync(copy, permuted, static_cast<size_t>(unpermute_bytes / 2), cudaMemcpyDeviceToDevice));
  });

  // Gate/up projection: [n_e, H] x [H, 2F] per expert, bf16 in, fp32 accumulate.
  const int n = 2 * width;
  std::vector<void*> weights;
  const float w1_scale = 1.0f / std::sqrt(static_cast<float>(hidden));
  for (int e = 0; e < experts; ++e) weights.push_back(Random(static_cast<size_t>(n) * hidden, w1_scale, 100 + e));
  std::vector<const void*> weight_ptrs(weights.begin(), weights.end());
  void* gemm_out = Alloc(static_cast<size_t>(pairs) * n * 2);
  absl::StatusOr<moex::kernels::cuda::GroupedGemm> grouped = moex::kernels::cuda::GroupedGemm::Create(experts);
  Check(grouped.status(), "GroupedGemm::Create");
  Check(moex::kernels::cuda::Permute(p, nullptr), "Permute");
  const double flops = 2.0 * pairs * static_cast<double>(hidden) * n;
  const double grouped_ms = Time(reps, [&] {
    Check(grouped->Run(permuted, weight_ptrs.data(), d_off, experts, n, hidden, Dtype::kBF16, gemm_out, nullptr),
          "GroupedGemm::Run");
  });
  const moex::kernels::cuda::GemmMode auto_mode = grouped->last_mode();
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "moex_bench_gpu: cublasCreate failed\n");
    return 1;
  }
  const float alpha = 1, beta = 0;
  // One [rows, H] x [H, 2F] product: the same FLOPs in one call.
  auto dense = [&](int rows) {
    cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, rows, hidden, &alpha, weights[0], CUDA_R_16BF, hidden, permuted,
                 CUDA_R_16BF, hidden, &beta, gemm_out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  const double dense_ms = Time(reps, [&] { dense(pairs); });

  // Both ways of running the experts, over rows per expert: where each wins.
  nlohmann::json modes = nlohmann::json::array();
  auto* d_off_sweep = static_cast<int32_t*>(Alloc(sizeof(int32_t) * (experts + 1)));
  std::printf("gate/up GEMM by rows per expert (%d experts): TFLOP/s of the grouped call, of per-expert calls, of one dense GEMM\n",
              experts);
  for (int rows_each : {16, 64, 128, 256, 1024}) {
    if (rows_each * experts > pairs) continue;
    std::vector<int32_t> off(static_cast<size_t>(experts) + 1);
    for (int e = 0; e <= experts; ++e) off[e] = e * rows_each;
    CHECK_CUDA(cudaMemcpy(d_off_sweep, off.data(), sizeof(int32_t) * off.size(), cudaMemcpyHostToDevice));
    const double f = 2.0 * rows_each * experts * static_cast<double>(hidden) * n;
    nlohmann::json m = {{"rows_per_expert", rows_each}};
    for (auto mode : {moex::kernels::cuda::GemmMode::kGroupedCall, moex::kernels::cuda::GemmMode::kPerExpert}) {
      grouped->set_mode(mode);
      const double ms = Time(reps, [&] {
        Check(grouped->Run(permuted, weight_ptrs.data(), d_off_sweep, experts, n, hidden, Dtype::kBF16, gemm_out,
                           nullptr),
              "GroupedGemm::Run");
      });
      m[std::string(moex::kernels::cuda::GemmModeName(mode)) + "_tflops"] = f / (ms * 1e9);
    }
    const double ms = Time(reps, [&] { dense(rows_each * experts); });
    m["dense_tflops"] = f / (ms * 1e9);
    std::printf("  %5d rows: %7.1f  %7.1f  %7.1f\n", rows_each, m["grouped-call_tflops"].get<double>(),
                m["per-expert_tflops"].get<double>(), m["dense_tflops"].get<double>());
    modes.push_back(m);
  }
  grouped->set_mode(moex::kernels::cuda::GemmMode::kAuto);

  // The whole layer: router GEMM [T, H] x [H, E] in fp32, softmax top-k
  // (renormalised), permute, gate/up, SwiGLU, down, weighted un-permute.
  void* router = Random(static_cast<size_t>(experts) * hidden, w1_scale, 7);
  auto* logits = static_cast<float*>(Alloc(sizeof(float) * static_cast<size_t>(tokens) * experts));
  void* act = Alloc(static_cast<size_t>(pairs) * width * 2);
  void* down_out = Alloc(static_cast<size_t>(pairs) * row);
  std::vector<void*> down_weights;
  const float w2_scale = 1.0f / std::sqrt(static_cast<float>(width));
  for (int e = 0; e < experts; ++e) down_weights.push_back(Random(static_cast<size_t>(hidden) * width, w2_scale, 200 + e));
  std::vector<const void*> down_ptrs(down_weights.begin(), down_weights.end());
  moex::kernels::cuda::RouteArgs r;
  r.logits = logits, r.num_tokens = tokens, r.num_experts = experts, r.top_k = top_k, r.renormalize = true;
  r.topk_idx = d_idx, r.topk_weights = d_w;
  auto layer = [&] {
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, experts, tokens, hidden, &alpha, router, CUDA_R_16BF, hidden, x,
                     CUDA_R_16BF, hidden, &beta, logits, CUDA_R_32F, experts, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "moex_bench_gpu: router cublasGemmEx failed\n");
      std::exit(1);
    }
    Check(moex::kernels::cuda::Route(r, nullptr), "Route");
    Check(moex::kernels::cuda::Permute(p, nullptr), "Permute");
    Check(grouped->Run(permuted, weight_ptrs.data(), d_off, experts, n, hidden, Dtype::kBF16, gemm_out, nullptr),
          "GroupedGemm::Run gate/up");
    Check(moex::kernels::cuda::SwiGlu(gemm_out, pairs, width, Dtype::kBF16, act, nullptr), "SwiGlu");
    Check(grouped->Run(act, down_ptrs.data(), d_off, experts, hidden, width, Dtype::kBF16, down_out, nullptr),
          "GroupedGemm::Run down");
    moex::kernels::cuda::UnpermuteArgs back = u;
    back.rows = down_out;
    Check(moex::kernels::cuda::Unpermute(back, nullptr), "Unpermute");
  };
  const double layer_ms = Time(reps, layer);
  const double layer_flops = 2.0 * tokens * static_cast<double>(hidden) * experts +
                             2.0 * pairs * static_cast<double>(hidden) * n + 2.0 * pairs * static_cast<double>(width) * hidden;
  // A checksum of the layer's output, so that a run on zeros or NaNs shows.
  std::vector<uint16_t> y_host(static_cast<size_t>(tokens) * hidden);
  CHECK_CUDA(cudaMemcpy(y_host.data(), y, y_host.size() * 2, cudaMemcpyDeviceToHost));
  double y_abs = 0;
  size_t y_bad = 0;
  for (uint16_t bits : y_host) {
    uint32_t word = static_cast<uint32_t>(bits) << 16;
    float v;
    std::memcpy(&v, &word, 4);
    if (!std::isfinite(v)) ++y_bad;
    else y_abs += std::fabs(v);
  }
  const double y_mean_abs = y_abs / static_cast<double>(y_host.size());
  cublasDestroy(handle);

  const double permute_gbps = permute_bytes / (permute_ms * 1e6), copy_gbps = permute_bytes / (copy_ms * 1e6);
  const double unpermute_gbps = unpermute_bytes / (unpermute_ms * 1e6);
  const double unpermute_copy_gbps = unpermute_bytes / (unpermute_copy_ms * 1e6);
  const double grouped_tflops = flops / (grouped_ms * 1e9), dense_tflops = flops / (dense_ms * 1e9);
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::printf("shapes: %d tokens x top-%d over %d local experts, hidden %d, expert width %d, bf16\n", tokens, top_k,
              experts, hidden, width);
  std::printf("permute:    %.1f GB/s; device copy of the same bytes %.1f GB/s; ratio %.2f (target >= 0.8)\n",
              permute_gbps, copy_gbps, permute_gbps / copy_gbps);
  std::printf("un-permute: %.1f GB/s; device copy of the same bytes %.1f GB/s; ratio %.2f (target >= 0.8)\n",
              unpermute_gbps, unpermute_copy_gbps, unpermute_gbps / unpermute_copy_gbps);
  std::printf("grouped GEMM (%s): %.1f TFLOP/s; one dense GEMM of the same FLOPs %.1f TFLOP/s; ratio %.2f (target >= 0.8)\n",
              moex::kernels::cuda::GemmModeName(auto_mode), grouped_tflops, dense_tflops, grouped_tflops / dense_tflops);
  std::printf("layer forward: %.3f ms (%.1f TFLOP/s); output mean |y| %.4g, %zu non-finite\n", layer_ms,
              layer_flops / (layer_ms * 1e9), y_mean_abs, y_bad);
  if (!json.empty()) {
    nlohmann::json j = {{"device", prop.name},
                        {"tokens", tokens}, {"top_k", top_k}, {"experts", experts}, {"hidden", hidden}, {"width", width},
                        {"permute_gbps", permute_gbps}, {"permute_copy_gbps", copy_gbps},
                        {"permute_ratio", permute_gbps / copy_gbps}, {"unpermute_gbps", unpermute_gbps},
                        {"unpermute_copy_gbps", unpermute_copy_gbps},
                        {"unpermute_ratio", unpermute_gbps / unpermute_copy_gbps},
                        {"grouped_tflops", grouped_tflops}, {"dense_tflops", dense_tflops},
                        {"gemm_ratio", grouped_tflops / dense_tflops},
                        {"gemm_mode", moex::kernels::cuda::GemmModeName(auto_mode)}, {"gemm_modes", modes},
                        {"permute_ms", permute_ms}, {"unpermute_ms", unpermute_ms}, {"grouped_ms", grouped_ms},
                        {"dense_ms", dense_ms}, {"layer_ms", layer_ms}, {"layer_tflops", layer_flops / (layer_ms * 1e9)},
                        {"layer_mean_abs_y", y_mean_abs}, {"layer_nonfinite", y_bad}, {"reps", reps}};
    std::ofstream(json) << j.dump(2) << "\n";
  }
  return 0;
}
