// The CUDA kernels on DeepSeek-V3 expert shapes, each beside a baseline
// timed in the same run, interleaved with it (each repetition runs the
// kernel, then its baseline, so that clock and thermal drift hit both
// alike). Every figure is the median over the repetitions (after 3 warm-up
// runs), printed with its p10-p90 spread; a ratio is the ratio of the two
// medians.
//   permute and un-permute: bandwidth against cudaMemcpyAsync (device to
//     device) moving the same bytes. Bytes are real traffic, each counted
//     once: a row read from memory and a row written to it are one row
//     each (permute reads T token rows and writes T*k permuted rows;
//     un-permute reads T*k rows and writes T; a copy of N bytes reads N
//     and writes N). The int32 routing metadata (under 0.1%) is not
//     counted. Target >= 0.8.
//   grouped expert GEMM (the gate/up projection of 32 local experts):
//     TFLOP/s (2 x M x N x K) against one dense cublasGemmEx with the same
//     FLOPs (target >= 0.8), and both ways of running it over rows per
//     expert.
//   the whole single-GPU layer forward (router GEMM, routing, permute,
//     gate/up grouped GEMM, SwiGLU, down grouped GEMM, weighted un-permute):
//     its time, for bench/gpu_layer_torch.py to set beside PyTorch's. It is
//     the kernel chain alone: `moex run --device cuda` adds the host layout,
//     NCCL and the host copies of x and y (bench/run_gpu.sh measures that
//     too).
// Inputs and weights are uniform random bf16 made on the device.
//
//   moex_bench_gpu [--tokens 4096] [--top-k 8] [--hidden 7168] [--width 2048]
//       [--experts 32] [--reps 50] [--json FILE]
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

#include "moex/core/provenance.h"
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

// One figure over the repetitions, milliseconds.
struct Spread {
  double median = 0, p10 = 0, p90 = 0, min = 0, max = 0;
};

Spread Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)]; };
  const size_t n = v.size();
  return {n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), at(0.1), at(0.9), v.front(), v.back()};
}

// Times each of `bodies` `reps` times (after 3 warm-up rounds), interleaved:
// repetition i runs body 0, then body 1, ... each between its own events.
std::vector<Spread> TimeInterleaved(int reps, const std::vector<std::function<void()>>& bodies) {
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 3; ++i) {
    for (const auto& body : bodies) body();
  }
  std::vector<std::vector<double>> ms(bodies.size());
  for (int i = 0; i < reps; ++i) {
    for (size_t b = 0; b < bodies.size(); ++b) {
      CHECK_CUDA(cudaEventRecord(start));
      bodies[b]();
      CHECK_CUDA(cudaEventRecord(stop));
      CHECK_CUDA(cudaEventSynchronize(stop));
      float t = 0;
      CHECK_CUDA(cudaEventElapsedTime(&t, start, stop));
      ms[b].push_back(t);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<Spread> out;
  for (auto& m : ms) out.push_back(Summarize(std::move(m)));
  return out;
}

Spread Time(int reps, const std::function<void()>& body) { return TimeInterleaved(reps, {body})[0]; }

nlohmann::json MsJson(const Spread& s) {
  return {{"median", s.median}, {"p10", s.p10}, {"p90", s.p90}, {"min", s.min}, {"max", s.max}};
}

// `amount` per millisecond, scaled (bytes -> GB/s: 1e-6; FLOPs -> TFLOP/s:
// 1e-9): the median rate is at the median time; its p10 at the p90 time.
nlohmann::json RateJson(const Spread& s, double amount, double scale) {
  return {{"median", amount * scale / s.median}, {"p10", amount * scale / s.p90}, {"p90", amount * scale / s.p10}};
}

// "812.3 (p10-p90 790.1-820.4)": a rate from its time spread.
std::string RateText(const Spread& s, double amount, double scale) {
  char text[96];
  std::snprintf(text, sizeof(text), "%.1f (p10-p90 %.1f-%.1f)", amount * scale / s.median, amount * scale / s.p90,
                amount * scale / s.p10);
  return text;
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
  moex::RecordCommandLine(argc, argv);
  int tokens = 4096, top_k = 8, hidden = 7168, width = 2048, experts = 32, reps = 50;
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
  if (reps < 2) {
    std::fprintf(stderr, "moex_bench_gpu: --reps %d: a spread needs at least 2\n", reps);
    return 2;
  }
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
  // Real traffic, each byte once: permute reads the T token rows once
  // (each feeds its k copies from registers) and writes the T*k permuted
  // rows; its baseline copies (T + T*k) / 2 rows, which reads and writes
  // as many bytes.
  const double permute_bytes = (static_cast<double>(tokens) + static_cast<double>(pairs)) * static_cast<double>(row);
  const size_t permute_copy_bytes = static_cast<size_t>(permute_bytes / 2);
  const std::vector<Spread> permute_t = TimeInterleaved(
      reps, {[&] { Check(moex::kernels::cuda::Permute(p, nullptr), "Permute"); },
             [&] { CHECK_CUDA(cudaMemcpyAsync(copy, permuted, permute_copy_bytes, cudaMemcpyDeviceToDevice)); }});
  moex::kernels::cuda::UnpermuteArgs u;
  u.rows = permuted, u.row_of_pair = d_row, u.topk_weights = d_w, u.num_tokens = tokens, u.top_k = top_k;
  u.hidden = hidden, u.dtype = Dtype::kBF16, u.out_dtype = Dtype::kBF16, u.y = y;
  // Un-permute reads the T*k rows and writes T (bf16 out).
  const double unpermute_bytes = static_cast<double>(pairs) * row + static_cast<double>(tokens) * row;
  const size_t unpermute_copy_bytes = static_cast<size_t>(unpermute_bytes / 2);
  const std::vector<Spread> unpermute_t = TimeInterleaved(
      reps, {[&] { Check(moex::kernels::cuda::Unpermute(u, nullptr), "Unpermute"); },
             [&] { CHECK_CUDA(cudaMemcpyAsync(copy, permuted, unpermute_copy_bytes, cudaMemcpyDeviceToDevice)); }});

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
  const double flops = 2.0 * pairs * static_cast<double>(hidden) * n;
  const std::vector<Spread> gemm_t = TimeInterleaved(
      reps, {[&] {
               Check(grouped->Run(permuted, weight_ptrs.data(), d_off, experts, n, hidden, Dtype::kBF16, gemm_out,
                                  nullptr),
                     "GroupedGemm::Run");
             },
             [&] { dense(pairs); }});
  const moex::kernels::cuda::GemmMode auto_mode = grouped->last_mode();

  // Both ways of running the experts, over rows per expert: where each wins.
  nlohmann::json modes = nlohmann::json::array();
  auto* d_off_sweep = static_cast<int32_t*>(Alloc(sizeof(int32_t) * (experts + 1)));
  std::printf("gate/up GEMM by rows per expert (%d experts), TFLOP/s, median of %d interleaved repetitions "
              "(p10-p90): the grouped call, per-expert calls, one dense GEMM of the same FLOPs\n",
              experts, reps);
  for (int rows_each : {16, 64, 128, 256, 1024}) {
    if (rows_each * experts > pairs) continue;
    std::vector<int32_t> off(static_cast<size_t>(experts) + 1);
    for (int e = 0; e <= experts; ++e) off[e] = e * rows_each;
    CHECK_CUDA(cudaMemcpy(d_off_sweep, off.data(), sizeof(int32_t) * off.size(), cudaMemcpyHostToDevice));
    const double f = 2.0 * rows_each * experts * static_cast<double>(hidden) * n;
    auto run_mode = [&](moex::kernels::cuda::GemmMode mode) {
      return [&, mode] {
        grouped->set_mode(mode);
        Check(grouped->Run(permuted, weight_ptrs.data(), d_off_sweep, experts, n, hidden, Dtype::kBF16, gemm_out,
                           nullptr),
              "GroupedGemm::Run");
      };
    };
    const std::vector<Spread> t = TimeInterleaved(reps, {run_mode(moex::kernels::cuda::GemmMode::kGroupedCall),
                                                         run_mode(moex::kernels::cuda::GemmMode::kPerExpert),
                                                         [&] { dense(rows_each * experts); }});
    modes.push_back({{"rows_per_expert", rows_each},
                     {"grouped-call_tflops", RateJson(t[0], f, 1e-9)},
                     {"per-expert_tflops", RateJson(t[1], f, 1e-9)},
                     {"dense_tflops", RateJson(t[2], f, 1e-9)}});
    std::printf("  %5d rows: %s  %s  %s\n", rows_each, RateText(t[0], f, 1e-9).c_str(), RateText(t[1], f, 1e-9).c_str(),
                RateText(t[2], f, 1e-9).c_str());
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
  const Spread layer_t = Time(reps, layer);
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

  const char* bytes_rule = "real traffic, each byte once: bytes read + bytes written (permute: T + T*k rows; "
                           "un-permute: T*k + T rows; a copy of N bytes: 2N); routing metadata not counted";
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::printf("shapes: %d tokens x top-%d over %d local experts, hidden %d, expert width %d, bf16\n", tokens, top_k,
              experts, hidden, width);
  std::printf("statistic: median of %d repetitions interleaved with the baseline (p10-p90); ratio = ratio of the "
              "medians\nbytes: %s\n", reps, bytes_rule);
  std::printf("permute:    %s GB/s; device copy of the same bytes %s GB/s; ratio %.2f (target >= 0.8)\n",
              RateText(permute_t[0], permute_bytes, 1e-6).c_str(), RateText(permute_t[1], permute_bytes, 1e-6).c_str(),
              permute_t[1].median / permute_t[0].median);
  std::printf("un-permute: %s GB/s; device copy of the same bytes %s GB/s; ratio %.2f (target >= 0.8)\n",
              RateText(unpermute_t[0], unpermute_bytes, 1e-6).c_str(),
              RateText(unpermute_t[1], unpermute_bytes, 1e-6).c_str(), unpermute_t[1].median / unpermute_t[0].median);
  std::printf("grouped GEMM (%s): %s TFLOP/s; one dense GEMM of the same FLOPs %s TFLOP/s; ratio %.2f (target >= 0.8)\n",
              moex::kernels::cuda::GemmModeName(auto_mode), RateText(gemm_t[0], flops, 1e-9).c_str(),
              RateText(gemm_t[1], flops, 1e-9).c_str(), gemm_t[1].median / gemm_t[0].median);
  std::printf("layer forward (kernel chain): %.3f ms (p10-p90 %.3f-%.3f; %.1f TFLOP/s); output mean |y| %.4g, %zu "
              "non-finite\n",
              layer_t.median, layer_t.p10, layer_t.p90, layer_flops / (layer_t.median * 1e9), y_mean_abs, y_bad);
  if (!json.empty()) {
    nlohmann::json j = {
        {"device", prop.name}, {"tokens", tokens}, {"top_k", top_k}, {"experts", experts}, {"hidden", hidden},
        {"width", width}, {"reps", reps},
        {"statistic", "median over reps repetitions interleaved with the baseline, after 3 warm-up rounds; p10/p90 "
                      "spread; *_ratio = ratio of the medians (baseline time / kernel time)"},
        {"byte_convention", bytes_rule},
        {"permute", {{"bytes", permute_bytes}, {"ms", MsJson(permute_t[0])}, {"copy_ms", MsJson(permute_t[1])},
                     {"gbps", RateJson(permute_t[0], permute_bytes, 1e-6)},
                     {"copy_gbps", RateJson(permute_t[1], permute_bytes, 1e-6)},
                     {"ratio", permute_t[1].median / permute_t[0].median}}},
        {"unpermute", {{"bytes", unpermute_bytes}, {"ms", MsJson(unpermute_t[0])}, {"copy_ms", MsJson(unpermute_t[1])},
                       {"gbps", RateJson(unpermute_t[0], unpermute_bytes, 1e-6)},
                       {"copy_gbps", RateJson(unpermute_t[1], unpermute_bytes, 1e-6)},
                       {"ratio", unpermute_t[1].median / unpermute_t[0].median}}},
        {"gemm", {{"flops", flops}, {"mode", moex::kernels::cuda::GemmModeName(auto_mode)},
                  {"ms", MsJson(gemm_t[0])}, {"dense_ms", MsJson(gemm_t[1])},
                  {"tflops", RateJson(gemm_t[0], flops, 1e-9)}, {"dense_tflops", RateJson(gemm_t[1], flops, 1e-9)},
                  {"ratio", gemm_t[1].median / gemm_t[0].median}, {"by_rows_per_expert", modes}}},
        {"layer", {{"flops", layer_flops}, {"ms", MsJson(layer_t)}, {"tflops", RateJson(layer_t, layer_flops, 1e-9)},
                   {"mean_abs_y", y_mean_abs}, {"nonfinite", y_bad}}},
        // Kept for readers of the first format (bench/gpu_layer_torch.py before 2026-12).
        {"layer_ms", layer_t.median}};
    j["provenance"] = moex::ProvenanceJson({1, "none", prop.name});
    std::ofstream(json) << j.dump(2) << "\n";
  }
  return 0;
}
