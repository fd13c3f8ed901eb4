// One expert's gated FFN over its tokens:
//   y [n, H] = down( silu(x . gate^T) * (x . up^T) )
// with x [n, H], gate and up [F, H], down [H, F] (Hugging Face layouts).
//
// The weights stay in the dtype they are stored in (moex/core/stored_matrix.h):
// F32 weights go to the GEMM as they are; any other format is turned into
// fp32 kFfnTileRows rows at a time in the workspace, each row once per call,
// and multiplied tile by tile.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moex/core/stored_matrix.h"

namespace moex::kernels {

struct ExpertWeightsView {
  const StoredMatrix* gate = nullptr;  // [F, H]
  const StoredMatrix* up = nullptr;    // [F, H]
  const StoredMatrix* down = nullptr;  // [H, F]
  int64_t hidden = 0;
  int64_t width = 0;
};

inline constexpr int64_t kFfnTileRows = 64;

// Floats of workspace GatedFfn needs for `num_tokens` tokens: the two [n, F]
// activations and one dequantised tile.
inline int64_t GatedFfnWorkspace(int64_t num_tokens, int64_t width, int64_t hidden) {
  return 2 * num_tokens * width + kFfnTileRows * std::max(width, hidden);
}

void GatedFfn(const ExpertWeightsView& w, const float* x, int64_t num_tokens, float* workspace, float* y);

// Threads the BLAS may use in this process (1 when ranks share the cores).
void SetBlasThreads(int threads);

}  // namespace moex::kernels
