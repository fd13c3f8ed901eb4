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

}  // namespace

void GatedFfn(const ExpertWeightsView& w, const float* x, int64_t n, float* workspace, float* y) {
  if (n == 0) return;
  const int64_t F = w.width, H = w.hidden;
  float* g = workspace;              // [n, F]
  float* u = workspace + n * F;      // [n, F]
  float* tile = workspace + 2 * n * F;
  MultiplyTransposed(*w.gate, x, n, tile, g, F);
  MultiplyTransposed(*w.up, x, n, tile, u, F);
  for (int64_t i = 0; i < n * F; ++i) {
    float a = g[i];
    g[i] = a / (1.0f + std::exp(-a)) * u[i];  // SiLU(gate) * up
  }
  MultiplyTransposed(*w.down, g, n, tile, y, H);
}

void SetBlasThreads(int threads) { openblas_set_num_threads(threads); }

}  // namespace moex::kernels
