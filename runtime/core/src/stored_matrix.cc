#include "moex/core/stored_matrix.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "moex/core/str_cat.h"

namespace moex {
namespace {

std::array<float, 256> MakeFp8Table() {
  std::array<float, 256> table{};
  for (int bits = 0; bits < 256; ++bits) {
    const int sign = bits >> 7, exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
    float magnitude;
    if (exponent == 0xf && mantissa == 0x7) {
      magnitude = std::numeric_limits<float>::quiet_NaN();
    } else if (exponent == 0) {
      magnitude = std::ldexp(static_cast<float>(mantissa) / 8.0f, -6);
    } else {
      magnitude = std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
    }
    table[bits] = sign ? -magnitude : magnitude;
  }
  return table;
}

const std::array<float, 256>& Fp8Table() {
  static const std::array<float, 256> table = MakeFp8Table();
  return table;
}

constexpr float kFp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                  -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The code of the grid value nearest `magnitude` (>= 0) among the first
// `count` codes, whose values rise with the code; ties to the even code.
template <typename ValueOf>
int NearestCode(float magnitude, int count, ValueOf value_of) {
  if (!(magnitude > 0.0f)) return 0;
  if (magnitude >= value_of(count - 1)) return count - 1;
  int low = 0, high = count - 1;  // value_of(low) <= magnitude < value_of(high)
  while (high - low > 1) {
    const int mid = (low + high) / 2;
    (value_of(mid) <= magnitude ? low : high) = mid;
  }
  const float below = magnitude - value_of(low), above = value_of(high) - magnitude;
  if (below < above) return low;
  if (above < below) return high;
  return (low % 2 == 0) ? low : high;
}

uint8_t FloatToFp4(float value) {
  const int code = NearestCode(std::fabs(value), 8, [](int c) { return kFp4Values[c]; });
  return static_cast<uint8_t>(code | (std::signbit(value) && code != 0 ? 8 : 0));
}

float ReadFloat(const std::byte* at) {
  float value;
  std::memcpy(&value, at, sizeof(value));
  return value;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

std::string_view WeightFormatName(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32: return "f32";
    case WeightFormat::kBF16: return "bf16";
    case WeightFormat::kF16: return "f16";
    case WeightFormat::kFP8Block: return "fp8";
    case WeightFormat::kMXFP4: return "mxfp4";
  }
  return "?";
}

absl::StatusOr<WeightFormat> ParseWeightFormat(std::string_view name) {
  for (WeightFormat format : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kF16, WeightFormat::kFP8Block,
                              WeightFormat::kMXFP4}) {
    if (name == WeightFormatName(format)) return format;
  }
  return absl::InvalidArgumentError(StrCat("weight dtype '", name, "' is not one of f32, bf16, f16, fp8, mxfp4"));
}

float Fp8E4M3ToFloat(uint8_t bits) { return Fp8Table()[bits]; }

uint8_t FloatToFp8E4M3(float value) {
  if (std::isnan(value)) return 0x7f;
  const float magnitude = std::fabs(value);
  int code;
  if (magnitude >= 448.0f) {
    code = 0x7e;  // saturate
  } else if (magnitude < 0.015625f) {
    // Subnormals are multiples of 2^-9; rounding up to 8 gives 2^-6, code 8.
    code = static_cast<int>(std::nearbyint(magnitude * 512.0f));
  } else {
    int exponent;
    const float fraction = std::frexp(magnitude, &exponent);  // [0.5, 1)
    // magnitude = 2^(exponent-1) x (1 + m/8): m rounded to even (both steps exact).
    const int mantissa = static_cast<int>(std::nearbyint((fraction * 2.0f - 1.0f) * 8.0f));
    code = std::min(0x7e, ((exponent - 1 + 7) << 3) + mantissa);  // mantissa 8 carries into the exponent
  }
  return static_cast<uint8_t>(code | (std::signbit(value) && code != 0 ? 0x80 : 0));
}

float Fp4E2M1ToFloat(uint8_t nibble) { return kFp4Values[nibble & 0xf]; }

float F16ToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const int exponent = (bits >> 10) & 0x1f;
  const uint32_t mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 0x1f) {
    magnitude = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  uint32_t word;
  std::memcpy(&word, &magnitude, sizeof(word));
  word |= sign;
  std::memcpy(&magnitude, &word, sizeof(word));
  return magnitude;
}

uint16_t FloatToF16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  const uint16_t sign = static_cast<uint16_t>((word >> 16) & 0x8000);
  const uint32_t magnitude = word & 0x7fffffff;
  if (magnitude > 0x7f800000) return sign | 0x7e00;  // NaN stays NaN
  if (magnitude >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds to infinity
  if (magnitude < 0x38800000) {                        // below 2^-14: a subnormal half
    float scaled;
    std::memcpy(&scaled, &magnitude, sizeof(scaled));
    // Multiples of 2^-24; the product is exact and nearbyint rounds ties to even.
    return sign | static_cast<uint16_t>(std::nearbyint(scaled * 16777216.0f));
  }
  uint32_t half = ((magnitude >> 23) - 127 + 15) << 10 | ((magnitude >> 13) & 0x3ff);
  const uint32_t rest = magnitude & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;  // a carry moves into the exponent
  return sign | static_cast<uint16_t>(half);
}

int64_t StoredMatrix::ValueBytes(WeightFormat format, int64_t rows, int64_t cols) {
  switch (format) {
    case WeightFormat::kF32: return rows * cols * 4;
    case WeightFormat::kBF16:
    case WeightFormat::kF16: return rows * cols * 2;
    case WeightFormat::kFP8Block: return rows * cols;
    case WeightFormat::kMXFP4: return cols % kMxfp4BlockSize == 0 ? rows * cols / 2 : 0;
  }
  return 0;
}

int64_t StoredMatrix::ScaleBytes(WeightFormat format, int64_t rows, int64_t cols) {
  switch (format) {
    case WeightFormat::kFP8Block: return CeilDiv(rows, kFp8BlockSize) * CeilDiv(cols, kFp8BlockSize) * 4;
    case WeightFormat::kMXFP4: return cols % kMxfp4BlockSize == 0 ? rows * (cols / kMxfp4BlockSize) : 0;
    default: return 0;
  }
}

std::vector<int64_t> StoredMatrix::ScaleShape(WeightFormat format, int64_t rows, int64_t cols) {
  if (format == WeightFormat::kFP8Block) return {CeilDiv(rows, kFp8BlockSize), CeilDiv(cols, kFp8BlockSize)};
  if (format == WeightFormat::kMXFP4) return {rows, cols / kMxfp4BlockSize};
  return {};
}

StoredMatrix StoredMatrix::FromTensor(const Tensor& tensor) { return FromTensor(Tensor(tensor)); }

StoredMatrix StoredMatrix::FromTensor(Tensor&& tensor) {
  StoredMatrix m;
  m.format = WeightFormat::kF32;
  m.rows = tensor.shape.empty() ? 0 : tensor.dim(0);
  m.cols = tensor.shape.size() < 2 ? (tensor.shape.empty() ? 0 : 1) : tensor.size() / std::max<int64_t>(1, m.rows);
  auto owned = std::make_shared<Tensor>(std::move(tensor));
  m.values = reinterpret_cast<const std::byte*>(owned->data());
  m.keep = std::move(owned);
  return m;
}

StoredMatrix StoredMatrix::FromBytes(WeightFormat format, int64_t rows, int64_t cols, const std::byte* bytes) {
  StoredMatrix m;
  m.format = format;
  m.rows = rows;
  m.cols = cols;
  const int64_t total = m.bytes();
  // Floats' alignment for the F32 fast path: new[] of a float array.
  auto owned = std::shared_ptr<float[]>(new float[static_cast<size_t>((total + 3) / 4)]);
  std::byte* at = reinterpret_cast<std::byte*>(owned.get());
  if (total > 0) std::memcpy(at, bytes, static_cast<size_t>(total));
  m.values = at;
  m.scales = m.scale_bytes() > 0 ? at + m.value_bytes() : nullptr;
  m.keep = std::move(owned);
  return m;
}

absl::StatusOr<StoredMatrix> StoredMatrix::Quantize(const Tensor& tensor, WeightFormat format) {
  if (tensor.shape.size() != 2) {
    return absl::InvalidArgumentError(StrCat("cannot store a ", ShapeString(tensor.shape), " tensor as a matrix"));
  }
  const int64_t rows = tensor.dim(0), cols = tensor.dim(1);
  if (format == WeightFormat::kMXFP4 && cols % kMxfp4BlockSize != 0) {
    return absl::InvalidArgumentError(StrCat("MXFP4 needs columns in blocks of 32; the matrix is ", ShapeString(tensor.shape)));
  }
  std::vector<std::byte> out(static_cast<size_t>(ValueBytes(format, rows, cols) + ScaleBytes(format, rows, cols)));
  std::byte* values = out.data();
  std::byte* scales = values + ValueBytes(format, rows, cols);
  const float* in = tensor.data();
  switch (format) {
    case WeightFormat::kF32:
      std::memcpy(values, in, out.size());
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
      for (int64_t i = 0; i < rows * cols; ++i) {
        uint16_t bits;
        if (format == WeightFormat::kBF16) {
          bits = FloatToBf16(in[i]);
        } else {
          bits = FloatToF16(in[i]);
        }
        std::memcpy(values + 2 * i, &bits, 2);
      }
      break;
    case WeightFormat::kFP8Block: {
      const int64_t block_cols = CeilDiv(cols, kFp8BlockSize);
      for (int64_t rb = 0; rb < CeilDiv(rows, kFp8BlockSize); ++rb) {
        for (int64_t cb = 0; cb < block_cols; ++cb) {
          const int64_t r0 = rb * kFp8BlockSize, r1 = std::min(rows, r0 + kFp8BlockSize);
          const int64_t c0 = cb * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
          float amax = 0;
          for (int64_t r = r0; r < r1; ++r) {
            for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(in[r * cols + c]));
          }
          const float scale = amax > 0 ? amax / 448.0f : 1.0f;
          std::memcpy(scales + 4 * (rb * block_cols + cb), &scale, 4);
          for (int64_t r = r0; r < r1; ++r) {
            for (int64_t c = c0; c < c1; ++c) {
              values[r * cols + c] = static_cast<std::byte>(FloatToFp8E4M3(in[r * cols + c] / scale));
            }
          }
        }
      }
      break;
    }
    case WeightFormat::kMXFP4: {
      const int64_t blocks = cols / kMxfp4BlockSize;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < blocks; ++b) {
          const float* x = in + r * cols + b * kMxfp4BlockSize;
          float amax = 0;
          for (int64_t i = 0; i < kMxfp4BlockSize; ++i) amax = std::max(amax, std::fabs(x[i]));
          int exponent = amax > 0 ? static_cast<int>(std::ceil(std::log2(amax / 6.0f))) : 0;
          exponent = std::clamp(exponent, -127, 127);
          scales[r * blocks + b] = static_cast<std::byte>(exponent + 127);
          for (int64_t i = 0; i < kMxfp4BlockSize; i += 2) {
            const uint8_t low = FloatToFp4(std::ldexp(x[i], -exponent));
            const uint8_t high = FloatToFp4(std::ldexp(x[i + 1], -exponent));
            values[(r * cols + b * kMxfp4BlockSize + i) / 2] = static_cast<std::byte>(low | (high << 4));
          }
        }
      }
      break;
    }
  }
  return FromBytes(format, rows, cols, out.data());
}

void StoredMatrix::Dequantize(int64_t first, int64_t count, float* out) const {
  const int64_t n = count * cols;
  switch (format) {
    case WeightFormat::kF32:
      std::memcpy(out, values + first * cols * 4, static_cast<size_t>(n) * 4);
      return;
    case WeightFormat::kBF16:
    case WeightFormat::kF16: {
      const std::byte* at = values + first * cols * 2;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, at + 2 * i, 2);
        out[i] = format == WeightFormat::kBF16 ? Bf16ToFloat(bits) : F16ToFloat(bits);
      }
      return;
    }
    case WeightFormat::kFP8Block: {
      const float* table = Fp8Table().data();
      const int64_t block_cols = CeilDiv(cols, kFp8BlockSize);
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = first + r;
        const uint8_t* in = reinterpret_cast<const uint8_t*>(values) + row * cols;
        const std::byte* scale_row = scales + 4 * (row / kFp8BlockSize) * block_cols;
        float* o = out + r * cols;
        for (int64_t cb = 0; cb < block_cols; ++cb) {
          const float scale = ReadFloat(scale_row + 4 * cb);
          const int64_t c0 = cb * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
          for (int64_t c = c0; c < c1; ++c) o[c] = table[in[c]] * scale;
        }
      }
      return;
    }
    case WeightFormat::kMXFP4: {
      const int64_t blocks = cols / kMxfp4BlockSize;
      for (int64_t r = 0; r < count; ++r) {
        const int64_t row = first + r;
        const uint8_t* in = reinterpret_cast<const uint8_t*>(values) + row * cols / 2;
        const uint8_t* scale_row = reinterpret_cast<const uint8_t*>(scales) + row * blocks;
        float* o = out + r * cols;
        for (int64_t b = 0; b < blocks; ++b) {
          const float scale = std::ldexp(1.0f, static_cast<int>(scale_row[b]) - 127);
          for (int64_t i = 0; i < kMxfp4BlockSize / 2; ++i) {
            const uint8_t byte = in[b * kMxfp4BlockSize / 2 + i];
            o[b * kMxfp4BlockSize + 2 * i] = kFp4Values[byte & 0xf] * scale;
            o[b * kMxfp4BlockSize + 2 * i + 1] = kFp4Values[byte >> 4] * scale;
          }
        }
      }
      return;
    }
  }
}

Tensor StoredMatrix::ToTensor() const {
  Tensor tensor({rows, cols});
  if (!empty()) Dequantize(0, rows, tensor.data());
  return tensor;
}

const float* StoredMatrix::f32() const {
  if (format != WeightFormat::kF32 || reinterpret_cast<uintptr_t>(values) % alignof(float) != 0) return nullptr;
  return reinterpret_cast<const float*>(values);
}

void StoredMatrix::CopyBytes(std::byte* out) const {
  if (value_bytes() > 0) std::memcpy(out, values, static_cast<size_t>(value_bytes()));
  if (scale_bytes() > 0) std::memcpy(out + value_bytes(), scales, static_cast<size_t>(scale_bytes()));
}

namespace {

// An owned, float-aligned StoredMatrix of `format` [rows, cols], values and
// scales uninitialised.
StoredMatrix Allocate(WeightFormat format, int64_t rows, int64_t cols) {
  StoredMatrix m;
  m.format = format;
  m.rows = rows;
  m.cols = cols;
  auto owned = std::shared_ptr<float[]>(new float[static_cast<size_t>((m.bytes() + 3) / 4)]);
  m.values = reinterpret_cast<const std::byte*>(owned.get());
  m.scales = m.scale_bytes() > 0 ? m.values + m.value_bytes() : nullptr;
  m.keep = std::move(owned);
  return m;
}

std::byte* Writable(const std::byte* at) { return const_cast<std::byte*>(at); }

}  // namespace

absl::StatusOr<StoredMatrix> StoredMatrix::SelectRows(int64_t first, int64_t step, int64_t count) const {
  if (first < 0 || step < 1 || count < 0 || (count > 0 && first + (count - 1) * step >= rows)) {
    return absl::OutOfRangeError(StrCat("rows ", first, ", ", first, " + ", step, ", ... (", count, " of them) of a [",
                                        rows, ", ", cols, "] matrix"));
  }
  if (format == WeightFormat::kFP8Block) {
    if (step != 1 || first % kFp8BlockSize != 0 || (count % kFp8BlockSize != 0 && first + count != rows)) {
      return absl::InvalidArgumentError(StrCat("FP8 rows ", first, ", ", first, " + ", step, ", ... (", count,
                                               " of them) cut through its 128x128 scale blocks"));
    }
    StoredMatrix out = Allocate(format, count, cols);
    std::memcpy(Writable(out.values), values + first * cols, static_cast<size_t>(out.value_bytes()));
    const int64_t scale_row = CeilDiv(cols, kFp8BlockSize) * 4;
    std::memcpy(Writable(out.scales), scales + first / kFp8BlockSize * scale_row,
                static_cast<size_t>(out.scale_bytes()));
    return out;
  }
  StoredMatrix out = Allocate(format, count, cols);
  const int64_t row_bytes = ValueBytes(format, 1, cols), scale_row = ScaleBytes(format, 1, cols);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t r = first + i * step;
    std::memcpy(Writable(out.values) + i * row_bytes, values + r * row_bytes, static_cast<size_t>(row_bytes));
    if (scale_row > 0) {
      std::memcpy(Writable(out.scales) + i * scale_row, scales + r * scale_row, static_cast<size_t>(scale_row));
    }
  }
  return out;
}

absl::StatusOr<StoredMatrix> StoredMatrix::ColumnsTransposed(int64_t first, int64_t step, int64_t count) const {
  if (format == WeightFormat::kFP8Block || format == WeightFormat::kMXFP4) {
    return absl::UnimplementedError(StrCat("a ", WeightFormatName(format), " [", rows, ", ", cols,
                                           "] matrix cannot be transposed: its scale blocks follow the stored rows"));
  }
  if (first < 0 || step < 1 || count < 0 || (count > 0 && first + (count - 1) * step >= cols)) {
    return absl::OutOfRangeError(StrCat("columns ", first, ", ", first, " + ", step, ", ... (", count,
                                        " of them) of a [", rows, ", ", cols, "] matrix"));
  }
  StoredMatrix out = Allocate(format, count, rows);
  const size_t width = format == WeightFormat::kF32 ? 4 : 2;
  std::byte* to = Writable(out.values);
  for (int64_t r = 0; r < rows; ++r) {
    const std::byte* row = values + r * cols * static_cast<int64_t>(width);
    for (int64_t i = 0; i < count; ++i) std::memcpy(to + (i * rows + r) * width, row + (first + i * step) * width, width);
  }
  return out;
}

}  // namespace moex
