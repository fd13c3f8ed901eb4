// One expert's gated FFN over its tokens:
//   y [n, H] = down( silu(x . gate^T) * (x . up^T) )
// with x [n, H], gate and up [F, H], down [H, F] (Hugging Face layouts).
#pragma once

#include <cstdint>

namespace moex::kernels {

struct ExpertWeightsView {
  const float* gate = nullptr;  // [F, H]
  const float* up = nullptr;    // [F, H]
  const float* down = nullptr;  // [H, F]
  int64_t hidden = 0;
  int64_t width = 0;
};

// Floats of workspace GatedFfn needs for `num_tokens` tokens.
inline int64_t GatedFfnWorkspace(int64_t num_tokens, int64_t width) { return 2 * num_tokens * width; }

void GatedFfn(const ExpertWeightsView& w, const float* x, int64_t num_tokens, float* workspace, float* y);

// Threads the BLAS may use in this process (1 when ranks share the cores).
void SetBlasThreads(int threads);

}  // namespace moex::kernels
