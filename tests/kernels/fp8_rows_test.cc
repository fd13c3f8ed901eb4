// The dispatch's FP8 rows (kernels/fp8_rows.h): DeepEP's per-128 scales,
// e4m3fn bytes rounded to nearest even and saturating, the read-back within
// e4m3's half-step of every value, a short last block, and what zeros, tiny
// rows, NaN and infinity become.
#include "moex/kernels/fp8_rows.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "moex/core/stored_matrix.h"

namespace moex::kernels {
namespace {

struct Quantised {
  std::vector<uint8_t> q;
  std::vector<float> scales, back;
};

Quantised RoundTrip(const std::vector<float>& x, int64_t rows, int64_t hidden) {
  Quantised out{std::vector<uint8_t>(x.size()), std::vector<float>(rows * Fp8RowScales(hidden)),
                std::vector<float>(x.size())};
  QuantizeRowsFp8(x.data(), rows, hidden, out.q.data(), out.scales.data());
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRowFp8(&out.q[r * hidden], &out.scales[r * Fp8RowScales(hidden)], hidden, &out.back[r * hidden]);
  }
  return out;
}

TEST(Fp8RowsTest, ScalesAreEachBlocksAmaxOver448AndTheAmaxIsExact) {
  const int64_t H = 300;  // blocks of 128, 128 and 44
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(2 * H);
  for (float& v : x) v = normal(rng);
  x[5] = -37.5f;       // row 0, block 0's amax, negative
  x[H + 290] = 0.02f;  // row 1, block 2: small values only
  for (int64_t i = H + 256; i < 2 * H; ++i) x[i] = i == H + 290 ? 0.02f : 0.001f;
  const Quantised got = RoundTrip(x, 2, H);
  ASSERT_EQ(got.scales.size(), 6u);
  EXPECT_EQ(got.scales[0], 37.5f / 448.0f);
  EXPECT_EQ(got.scales[5], 0.02f / 448.0f);
  // The block's largest value lands on e4m3's largest, 448, and reads back
  // as itself to fp32 rounding.
  EXPECT_EQ(got.q[5], 0xfe);  // -448
  EXPECT_NEAR(got.back[5], -37.5f, 37.5f * 1e-6f);
  EXPECT_EQ(got.q[H + 290], 0x7e);
}

TEST(Fp8RowsTest, EveryValueReadsBackWithinHalfAnE4m3Step) {
  const int64_t rows = 16, H = 7168;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> x(rows * H);
  for (float& v : x) v = normal(rng);
  const Quantised got = RoundTrip(x, rows, H);
  const int64_t blocks = Fp8RowScales(H);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < H; ++i) {
      const float scale = got.scales[r * blocks + i / kFp8RowBlock], v = x[r * H + i];
      // e4m3: 3 mantissa bits (a relative half-step of 2^-4) in the normal
      // range, steps of 2^-9 below 2^-6 (scaled).
      const float scaled = std::fabs(v) / scale;
      const float half_step = scaled >= 0.015625f ? std::ldexp(1.0f, std::ilogb(scaled) - 4) : std::ldexp(1.0f, -10);
      ASSERT_LE(std::fabs(got.back[r * H + i] - v), half_step * scale * 1.0001f) << "row " << r << ", value " << i;
      // Nearest, not merely close: the byte is FloatToFp8E4M3 of the value
      // times 448 / the block's amax.
      const int64_t begin = i / kFp8RowBlock * kFp8RowBlock;
      float amax = kFp8MinAmax;
      for (int64_t j = begin; j < std::min(H, begin + kFp8RowBlock); ++j) amax = std::fmax(amax, std::fabs(x[r * H + j]));
      ASSERT_EQ(got.q[r * H + i], FloatToFp8E4M3(v * (448.0f / amax))) << "row " << r << ", value " << i;
    }
  }
}

TEST(Fp8RowsTest, ZerosTinyRowsNanAndInfinity) {
  const int64_t H = 128;
  std::vector<float> x(4 * H, 0.0f);
  for (int64_t i = 0; i < H; ++i) x[H + i] = 1e-7f;  // below the amax floor of 1e-4
  x[2 * H + 3] = std::numeric_limits<float>::quiet_NaN();
  x[2 * H + 4] = 2.0f;
  x[3 * H + 9] = std::numeric_limits<float>::infinity();
  const Quantised got = RoundTrip(x, 4, H);
  EXPECT_EQ(got.scales[0], kFp8MinAmax / 448.0f);
  for (int64_t i = 0; i < H; ++i) EXPECT_EQ(got.back[i], 0.0f);
  // 1e-7 scaled by 448 / 1e-4 is 0.448: a normal e4m3 value, not flushed.
  EXPECT_NEAR(got.back[H], 1e-7f, 1e-7f / 16);
  EXPECT_TRUE(std::isnan(got.back[2 * H + 3]));
  EXPECT_NEAR(got.back[2 * H + 4], 2.0f, 1e-6f);  // a NaN does not move its block's scale
  EXPECT_TRUE(std::isnan(got.back[3 * H + 9]));
  EXPECT_TRUE(std::isnan(got.back[3 * H]));  // the infinity's block reads back as NaN
}

}  // namespace
}  // namespace moex::kernels
