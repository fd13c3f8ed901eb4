// One expert's MLP over its tokens, with x [n, H], gate and up [F, H], down
// [H, F] (Hugging Face layouts):
//   gated (silu, gpt-oss's clamped SwiGLU): y = down(act(x . gate^T + bg, x . up^T + bu)) + bd
//   not gated (relu^2, Nemotron-H):         y = down(relu(x . up^T + bu)^2) + bd
// The biases are optional (gpt-oss has them); model::ExpertMlpSpec says
// which activation a family uses.
//
// The weights stay in the dtype they are stored in (moex/core/stored_matrix.h):
// F32 weights go to the GEMM as they are; any other format is turned into
// fp32 kFfnTileRows rows at a time in the workspace, each row once per call,
// and multiplied tile by tile.
#pragma once

#include <algorithm>
#include <cstdint>

#include "moex/core/stored_matrix.h"
#include "moex/model/architecture.h"

namespace moex::kernels {

struct ExpertWeightsView {
  const StoredMatrix* gate = nullptr;  // [F, H]; null when not gated
  const StoredMatrix* up = nullptr;    // [F, H]
  const StoredMatrix* down = nullptr;  // [H, F]
  const float* gate_bias = nullptr;    // [F], or null
  const float* up_bias = nullptr;      // [F], or null
  const float* down_bias = nullptr;    // [H], or null
  int64_t hidden = 0;
  int64_t width = 0;
  model::ExpertMlpSpec mlp = {};  // activation and its constants
};

inline constexpr int64_t kFfnTileRows = 64;

// Floats of workspace ExpertFfn needs for `num_tokens` tokens: the two [n, F]
// activations and one dequantised tile.
inline int64_t ExpertFfnWorkspace(int64_t num_tokens, int64_t width, int64_t hidden) {
  return 2 * num_tokens * width + kFfnTileRows * std::max(width, hidden);
}

void ExpertFfn(const ExpertWeightsView& w, const float* x, int64_t num_tokens, float* workspace, float* y);

// Threads the BLAS may use in this process (1 when ranks share the cores).
void SetBlasThreads(int threads);

}  // namespace moex::kernels
