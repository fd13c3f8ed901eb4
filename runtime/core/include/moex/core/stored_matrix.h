// A weight matrix kept in the dtype its checkpoint stores it in, and turned
// into fp32 a few rows at a time where it is used.
//
// Formats (rows are output features, columns input features, as Hugging
// Face's Linear weights [out, in]):
//  - F32, BF16, F16: one value per element;
//  - FP8 (e4m3fn) with DeepSeek's block scales: one byte per element and an
//    F32 scale per 128x128 block, [ceil(rows/128), ceil(cols/128)]; the
//    weight is the fp8 value times its block's scale (`weight_scale_inv`);
//  - MXFP4 (OCP microscaling, as gpt-oss ships its experts): two e2m1 values
//    per byte, low nibble first, and one e8m0 scale (2^(s-127)) per 32
//    values of a row, [rows, cols/32].
//
// The bytes are either owned or borrowed from a read-only mapping of the
// checkpoint (or of the host's weight cache); `keep` holds whichever it is,
// so a copy of a StoredMatrix shares the bytes and never copies them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/tensor.h"

namespace moex {

enum class WeightFormat { kF32, kBF16, kF16, kFP8Block, kMXFP4 };

// "f32", "bf16", "f16", "fp8", "mxfp4".
std::string_view WeightFormatName(WeightFormat format);
// The inverse of WeightFormatName; an error names the accepted names.
absl::StatusOr<WeightFormat> ParseWeightFormat(std::string_view name);

inline constexpr int64_t kFp8BlockSize = 128;  // DeepSeek's weight_block_size
inline constexpr int64_t kMxfp4BlockSize = 32;

// e4m3fn (no infinities; 0x7f and 0xff are NaN) to float, and float to the
// nearest e4m3fn, ties to even, saturating at +-448.
float Fp8E4M3ToFloat(uint8_t bits);
uint8_t FloatToFp8E4M3(float value);
// e2m1 (the low 4 bits) to float: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives.
float Fp4E2M1ToFloat(uint8_t nibble);
// IEEE half to float, and float to the nearest half, ties to even (by bits:
// not every compiler has _Float16 on x86).
float F16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);

struct StoredMatrix {
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0, cols = 0;
  const std::byte* values = nullptr;
  const std::byte* scales = nullptr;  // FP8 and MXFP4 only
  std::shared_ptr<const void> keep;   // owns or maps values and scales

  // Bytes of the values and of the scales in this format; a shape the
  // format cannot hold (MXFP4 with cols not a multiple of 32) is 0.
  static int64_t ValueBytes(WeightFormat format, int64_t rows, int64_t cols);
  static int64_t ScaleBytes(WeightFormat format, int64_t rows, int64_t cols);
  // Shape of the scale tensor a checkpoint holds: FP8 [ceil(r/128),
  // ceil(c/128)], MXFP4 [r, c/32]; empty for the others.
  static std::vector<int64_t> ScaleShape(WeightFormat format, int64_t rows, int64_t cols);
  int64_t value_bytes() const { return ValueBytes(format, rows, cols); }
  int64_t scale_bytes() const { return ScaleBytes(format, rows, cols); }
  int64_t bytes() const { return value_bytes() + scale_bytes(); }
  bool empty() const { return rows == 0 || cols == 0; }

  // Owns a copy of `tensor` (2-D) as F32; the rvalue form takes it over.
  static StoredMatrix FromTensor(const Tensor& tensor);
  static StoredMatrix FromTensor(Tensor&& tensor);
  // Owns a copy of `bytes` (values, then scales, as CopyBytes writes them).
  static StoredMatrix FromBytes(WeightFormat format, int64_t rows, int64_t cols, const std::byte* bytes);
  // Quantises `tensor` (2-D) into `format`: FP8 scales each 128x128 block by
  // its largest magnitude over 448, MXFP4 each 32 values of a row by the
  // power of two that brings its largest magnitude to 6 or below.
  static absl::StatusOr<StoredMatrix> Quantize(const Tensor& tensor, WeightFormat format);

  // Rows [first, first + count) as fp32 into `out` [count, cols].
  void Dequantize(int64_t first, int64_t count, float* out) const;
  Tensor ToTensor() const;
  // The F32 values in place when they are F32 and aligned for floats; null
  // otherwise (then Dequantize).
  const float* f32() const;
  // Writes values then scales, bytes() in all, to `out`.
  void CopyBytes(std::byte* out) const;

  // Layout changes for checkpoints that fuse or transpose their experts'
  // projections; each result owns its bytes and keeps the format.
  // Rows first, first + step, ... (`count` of them): formats whose rows are
  // independent (F32, BF16, F16, MXFP4), and FP8 for a step of 1 from a
  // multiple of 128 (whole scale blocks). The error says what cannot be cut.
  absl::StatusOr<StoredMatrix> SelectRows(int64_t first, int64_t step, int64_t count) const;
  // Columns first, first + step, ... (`count` of them) as the rows of the
  // result, [count, rows]: F32, BF16 and F16 (FP8 and MXFP4 scale blocks
  // follow the stored orientation and cannot be turned).
  absl::StatusOr<StoredMatrix> ColumnsTransposed(int64_t first, int64_t step, int64_t count) const;
};

}  // namespace moex
