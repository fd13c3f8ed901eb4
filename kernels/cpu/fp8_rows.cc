#include "moex/kernels/fp8_rows.h"

#include <algorithm>
#include <cmath>

#include "moex/core/stored_matrix.h"

namespace moex::kernels {

void QuantizeRowsFp8(const float* x, int64_t rows, int64_t hidden, uint8_t* q, float* scales) {
  const int64_t blocks = Fp8RowScales(hidden);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kFp8RowBlock, end = std::min(hidden, begin + kFp8RowBlock);
      const float* in = x + r * hidden;
      float amax = kFp8MinAmax;
      for (int64_t i = begin; i < end; ++i) amax = std::fmax(amax, std::fabs(in[i]));
      const float up = kFp8Max / amax;
      scales[r * blocks + b] = amax / kFp8Max;
      uint8_t* out = q + r * hidden;
      for (int64_t i = begin; i < end; ++i) out[i] = FloatToFp8E4M3(in[i] * up);
    }
  }
}

void DequantizeRowFp8(const uint8_t* q, const float* scales, int64_t hidden, float* x) {
  for (int64_t i = 0; i < hidden; ++i) x[i] = Fp8E4M3ToFloat(q[i]) * scales[i / kFp8RowBlock];
}

}  // namespace moex::kernels
