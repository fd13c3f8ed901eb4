#include "moex/kernels/expert_ffn.h"

#include <cblas.h>

#include <cmath>

namespace moex::kernels {

void GatedFfn(const ExpertWeightsView& w, const float* x, int64_t n, float* workspace, float* y) {
  if (n == 0) return;
  const int N = static_cast<int>(n), H = static_cast<int>(w.hidden), F = static_cast<int>(w.width);
  float* g = workspace;          // [n, F]
  float* u = workspace + n * F;  // [n, F]
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, F, H, 1.0f, x, H, w.gate, H, 0.0f, g, F);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, F, H, 1.0f, x, H, w.up, H, 0.0f, u, F);
  for (int64_t i = 0; i < n * F; ++i) {
    float a = g[i];
    g[i] = a / (1.0f + std::exp(-a)) * u[i];  // SiLU(gate) * up
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, H, F, 1.0f, g, F, w.down, F, 0.0f, y, H);
}

void SetBlasThreads(int threads) { openblas_set_num_threads(threads); }

}  // namespace moex::kernels
