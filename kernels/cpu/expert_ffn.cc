#include "moex/kernels/expert_ffn.h"

#include <cblas.h>

#include <cmath>

namespace moex::kernels {
namespace {

// out [n, rows of w] (leading dimension ldc) = in [n, K] . w^T, w [R, K]:
// straight from F32 weights, else a tile of rows at a time from `tile`.
void MultiplyTransposed(const StoredMatrix& w, const float* in, int64_t n, float* tile, float* out, int64_t ldc) {
  const int N = static_cast<int>(n), K = static_cast<int>(w.cols);
  if (const float* direct = w.f32()) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, static_cast<int>(w.rows), K, 1.0f, in, K, direct, K, 0.0f,
                out, static_cast<int>(ldc));
    return;
  }
  for (int64_t first = 0; first < w.rows; first += kFfnTileRows) {
    const int64_t count = std::min(kFfnTileRows, w.rows - first);
    w.Dequantize(first, count, tile);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, static_cast<int>(count), K, 1.0f, in, K, tile, K, 0.0f,
                out + first, static_cast<int>(ldc));
  }
}

void AddBias(const float* bias, int64_t n, int64_t width, float* out) {
  if (bias == nullptr) return;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t f = 0; f < width; ++f) out[i * width + f] += bias[f];
  }
}

}  // namespace

void ExpertFfn(const ExpertWeightsView& w, const float* x, int64_t n, float* workspace, float* y) {
  if (n == 0) return;
  const int64_t F = w.width, H = w.hidden;
  float* g = workspace;              // [n, F]
  float* u = workspace + n * F;      // [n, F]
  float* tile = workspace + 2 * n * F;
  MultiplyTransposed(*w.up, x, n, tile, u, F);
  AddBias(w.up_bias, n, F, u);
  const float limit = static_cast<float>(w.mlp.swiglu_limit);
  switch (w.mlp.activation) {
    case model::ExpertActivation::kSilu:
      MultiplyTransposed(*w.gate, x, n, tile, g, F);
      AddBias(w.gate_bias, n, F, g);
      for (int64_t i = 0; i < n * F; ++i) {
        float a = g[i], b = u[i];
        if (limit > 0) {
          a = std::min(a, limit);
          b = std::clamp(b, -limit, limit);
        }
        g[i] = a / (1.0f + std::exp(-a)) * b;  // SiLU(gate) * up
      }
      break;
    case model::ExpertActivation::kSwigluOai: {
      MultiplyTransposed(*w.gate, x, n, tile, g, F);
      AddBias(w.gate_bias, n, F, g);
      const float alpha = static_cast<float>(w.mlp.swiglu_alpha);
      for (int64_t i = 0; i < n * F; ++i) {
        const float a = std::min(g[i], limit), b = std::clamp(u[i], -limit, limit);
        g[i] = (b + 1.0f) * (a / (1.0f + std::exp(-alpha * a)));
      }
      break;
    }
    case model::ExpertActivation::kRelu2:
      for (int64_t i = 0; i < n * F; ++i) {
        const float a = std::max(u[i], 0.0f);
        g[i] = a * a;
      }
      break;
  }
  MultiplyTransposed(*w.down, g, n, tile, y, H);
  AddBias(w.down_bias, n, H, y);
}

void SetBlasThreads(int threads) { openblas_set_num_threads(threads); }

}  // namespace moex::kernels
