// A host tensor: fp32 values, row-major, with its shape. moex computes in
// fp32 on the CPU; bf16 is a storage format converted at the edges.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace moex {

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> values;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> dims) : shape(std::move(dims)), values(NumElements(shape)) {}

  static int64_t NumElements(const std::vector<int64_t>& dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  int64_t size() const { return static_cast<int64_t>(values.size()); }
  int64_t dim(int i) const { return shape[i]; }
  float* data() { return values.data(); }
  const float* data() const { return values.data(); }
  // Row `r` of a 2-D tensor.
  float* row(int64_t r) { return values.data() + r * shape[1]; }
  const float* row(int64_t r) const { return values.data() + r * shape[1]; }
};

// "[256, 7168]".
std::string ShapeString(const std::vector<int64_t>& shape);

// bfloat16 <-> float. To bf16 rounds to nearest even; NaN stays NaN.
inline float Bf16ToFloat(uint16_t bits) {
  uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof(value));
  return value;
}
inline uint16_t FloatToBf16(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((word >> 16) | 0x40);
  word += 0x7fffu + ((word >> 16) & 1u);
  return static_cast<uint16_t>(word >> 16);
}

}  // namespace moex
