// Activation rows quantised to FP8 for dispatch, in DeepEP's format: each
// row of H values in blocks of 128 (the last one shorter when H is not a
// multiple of 128), one fp32 scale a block:
//
//   amax  = max(|x| over the block, 1e-4)
//   scale = amax / 448                       (stored; 448 is e4m3fn's largest)
//   q     = e4m3fn(x * (448 / amax))         nearest, ties to even, saturating
//   x'    = float(q) * scale                 (what the receiver computes with)
//
// Every step is one IEEE fp32 operation, so the CUDA kernel
// (kernels/cuda/fp8_rows.cu) gives the same bytes. A row of H values takes H
// bytes and 4 * ceil(H / 128) bytes of scales: 0.516x of bf16 and 0.258x of
// fp32 at H = 7168. A NaN stays NaN; an infinity makes its block NaN.
#pragma once

#include <cstdint>

namespace moex::kernels {

inline constexpr int64_t kFp8RowBlock = 128;
inline constexpr float kFp8Max = 448.0f;
inline constexpr float kFp8MinAmax = 1e-4f;

// Scales a row of `hidden` values has: ceil(hidden / 128).
inline int64_t Fp8RowScales(int64_t hidden) { return (hidden + kFp8RowBlock - 1) / kFp8RowBlock; }

// x [rows, hidden] -> q [rows, hidden] e4m3fn bytes, scales [rows, Fp8RowScales(hidden)].
void QuantizeRowsFp8(const float* x, int64_t rows, int64_t hidden, uint8_t* q, float* scales);
// One row: q [hidden], scales [Fp8RowScales(hidden)] -> x [hidden].
void DequantizeRowFp8(const uint8_t* q, const float* scales, int64_t hidden, float* x);

}  // namespace moex::kernels
