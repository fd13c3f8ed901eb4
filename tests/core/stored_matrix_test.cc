// Stored weight formats against values computed here from the formats'
// definitions (not from the code under test).
#include "moex/core/stored_matrix.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "moex/core/mapped_file.h"

namespace moex {
namespace {

using ::testing::HasSubstr;

TEST(Fp8Test, KnownCodesAndRoundTrip) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);         // exponent 7 (bias 7), mantissa 0
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);       // the largest finite
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0.001953125f); // smallest subnormal, 2^-9
  EXPECT_EQ(Fp8E4M3ToFloat(0xb8), -1.0f);
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xff)));
  for (int bits = 0; bits < 256; ++bits) {
    if ((bits & 0x7f) == 0x7f) continue;
    const float value = Fp8E4M3ToFloat(static_cast<uint8_t>(bits));
    if (bits == 0x80) continue;  // -0 encodes as +0
    EXPECT_EQ(FloatToFp8E4M3(value), bits) << bits;
  }
  EXPECT_EQ(FloatToFp8E4M3(1000.0f), 0x7e);  // saturates
  EXPECT_EQ(FloatToFp8E4M3(1.0625f), 0x38);  // halfway between 1 and 1.125: to the even code
  EXPECT_EQ(FloatToFp8E4M3(1.07f), 0x39);
}

// Rounding against a search of every code for the nearest (ties to the
// even code), over magnitudes from subnormal to past the largest.
TEST(Fp8Test, RoundsToTheNearestCodeTiesToEven) {
  std::mt19937 gen(3);
  std::uniform_real_distribution<float> exponent(-12.0f, 9.5f);
  std::vector<float> values = {0.0f, 1e-30f, 0.0009765625f, 0.015625f, 0.0146484375f, 448.0f, 464.0f, 480.0f, 1e9f};
  for (int i = 0; i < 200000; ++i) values.push_back(std::exp2(exponent(gen)) * (i % 2 ? -1.0f : 1.0f));
  for (int code = 0; code < 126; ++code) {  // every midpoint: a tie
    values.push_back(0.5f * (Fp8E4M3ToFloat(static_cast<uint8_t>(code)) + Fp8E4M3ToFloat(static_cast<uint8_t>(code + 1))));
  }
  for (float v : values) {
    const float m = std::fabs(v);
    int best = 0;
    for (int code = 1; code < 127; ++code) {
      const float d = std::fabs(Fp8E4M3ToFloat(static_cast<uint8_t>(code)) - m);
      const float d_best = std::fabs(Fp8E4M3ToFloat(static_cast<uint8_t>(best)) - m);
      if (d < d_best || (d == d_best && code % 2 == 0)) best = code;
    }
    const uint8_t expected = static_cast<uint8_t>(best | (v < 0 && best != 0 ? 0x80 : 0));
    ASSERT_EQ(FloatToFp8E4M3(v), expected) << v;
  }
}

TEST(Fp4Test, GridAndHalf) {
  const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(Fp4E2M1ToFloat(static_cast<uint8_t>(i)), grid[i]);
    EXPECT_EQ(Fp4E2M1ToFloat(static_cast<uint8_t>(i | 8)), -grid[i]);
  }
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
}

TEST(F16Test, FloatToHalfRoundsTiesToEvenAndRoundTripsEveryHalf) {
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToF16(-2.0f), 0xc000);
  EXPECT_EQ(FloatToF16(0.0f), 0x0000);
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::numeric_limits<float>::quiet_NaN()))));
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: to even (1). 1 + 3x2^-11: up.
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Subnormals: 2^-25 ties to 0, 3x2^-25 to 2x2^-24; the largest rounds up to 2^-14.
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToF16(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
  // Every finite half survives half -> float -> half.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    if ((bits & 0x7c00) == 0x7c00) continue;
    ASSERT_EQ(FloatToF16(F16ToFloat(static_cast<uint16_t>(bits))), bits) << "half 0x" << std::hex << bits;
  }
}

Tensor Random(int64_t rows, int64_t cols, uint32_t seed) {
  Tensor t({rows, cols});
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  for (float& v : t.values) v = dist(gen);
  return t;
}

// Each format's dequantised rows, against a decoding written out here from
// the raw bytes, and the error of the round trip against the format's step.
TEST(StoredMatrixTest, EachFormatDequantisesRowRangesAsItsDefinitionSays) {
  const Tensor t = Random(200, 320, 7);  // not multiples of 128: partial blocks
  for (WeightFormat format : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kF16, WeightFormat::kFP8Block,
                              WeightFormat::kMXFP4}) {
    SCOPED_TRACE(std::string(WeightFormatName(format)));
    absl::StatusOr<StoredMatrix> m = StoredMatrix::Quantize(t, format);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->bytes(), StoredMatrix::ValueBytes(format, 200, 320) + StoredMatrix::ScaleBytes(format, 200, 320));
    std::vector<float> rows(37 * 320);
    m->Dequantize(130, 37, rows.data());
    const auto* values = reinterpret_cast<const uint8_t*>(m->values);
    const auto* scales = reinterpret_cast<const uint8_t*>(m->scales);
    double worst = 0;
    for (int64_t r = 130; r < 167; ++r) {
      for (int64_t c = 0; c < 320; ++c) {
        float expected = 0;
        if (format == WeightFormat::kFP8Block) {
          float scale;
          std::memcpy(&scale, scales + 4 * ((r / 128) * 3 + c / 128), 4);
          expected = Fp8E4M3ToFloat(values[r * 320 + c]) * scale;
        } else if (format == WeightFormat::kMXFP4) {
          const uint8_t byte = values[(r * 320 + c) / 2];
          expected = Fp4E2M1ToFloat(c % 2 == 0 ? byte & 0xf : byte >> 4) *
                     std::ldexp(1.0f, static_cast<int>(scales[r * 10 + c / 32]) - 127);
        } else if (format == WeightFormat::kBF16) {
          uint16_t bits;
          std::memcpy(&bits, m->values + 2 * (r * 320 + c), 2);
          expected = Bf16ToFloat(bits);
        } else if (format == WeightFormat::kF16) {
          uint16_t bits;
          std::memcpy(&bits, m->values + 2 * (r * 320 + c), 2);
          expected = F16ToFloat(bits);
        } else {
          expected = t.values[r * 320 + c];
        }
        ASSERT_EQ(rows[(r - 130) * 320 + c], expected) << r << "," << c;
        worst = std::max(worst, std::fabs(static_cast<double>(expected) - t.values[r * 320 + c]));
      }
    }
    // Largest values ~0.1: fp8 keeps 3 mantissa bits, fp4 1.
    const double bound = format == WeightFormat::kMXFP4 ? 0.05 : format == WeightFormat::kFP8Block ? 0.01 : 1e-3;
    EXPECT_LT(worst, bound);
    // Bytes out and back in are the same matrix.
    std::vector<std::byte> bytes(m->bytes());
    m->CopyBytes(bytes.data());
    StoredMatrix again = StoredMatrix::FromBytes(format, 200, 320, bytes.data());
    EXPECT_EQ(again.ToTensor().values, m->ToTensor().values);
  }
  EXPECT_THAT(std::string(StoredMatrix::Quantize(Random(4, 40, 1), WeightFormat::kMXFP4).status().message()),
              HasSubstr("blocks of 32"));
  EXPECT_THAT(std::string(ParseWeightFormat("int4").status().message()), HasSubstr("f32, bf16, f16, fp8, mxfp4"));
}

// Layout changes for fused checkpoints: rows picked by a stride (gpt-oss's
// interleaved gate/up) and columns turned into rows (Llama 4's x @ W).
TEST(StoredMatrixTest, SelectRowsAndColumnsTransposedMoveEachValueWhereItBelongs) {
  const Tensor t = Random(6, 64, 9);
  for (WeightFormat format : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kF16, WeightFormat::kMXFP4}) {
    SCOPED_TRACE(std::string(WeightFormatName(format)));
    const StoredMatrix m = format == WeightFormat::kF32 ? StoredMatrix::FromTensor(t)
                                                        : *StoredMatrix::Quantize(t, format);
    const Tensor all = m.ToTensor();
    absl::StatusOr<StoredMatrix> odd = m.SelectRows(1, 2, 3);
    ASSERT_TRUE(odd.ok()) << odd.status();
    EXPECT_EQ(odd->format, format);
    const Tensor got = odd->ToTensor();
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t c = 0; c < 64; ++c) EXPECT_EQ(got.values[r * 64 + c], all.values[(1 + 2 * r) * 64 + c]);
    }
    EXPECT_FALSE(m.SelectRows(1, 2, 4).ok());  // row 7 of 6
    absl::StatusOr<StoredMatrix> turned = m.ColumnsTransposed(32, 1, 32);
    if (format == WeightFormat::kMXFP4) {
      EXPECT_EQ(turned.status().code(), absl::StatusCode::kUnimplemented);
      continue;
    }
    ASSERT_TRUE(turned.ok()) << turned.status();
    ASSERT_EQ(turned->rows, 32);
    ASSERT_EQ(turned->cols, 6);
    const Tensor tt = turned->ToTensor();
    for (int64_t c = 0; c < 32; ++c) {
      for (int64_t r = 0; r < 6; ++r) EXPECT_EQ(tt.values[c * 6 + r], all.values[r * 64 + 32 + c]);
    }
  }
  // FP8 rows come in 128-row scale blocks: whole blocks only.
  const StoredMatrix fp8 = *StoredMatrix::Quantize(Random(256, 128, 3), WeightFormat::kFP8Block);
  absl::StatusOr<StoredMatrix> second = fp8.SelectRows(128, 1, 128);
  ASSERT_TRUE(second.ok()) << second.status();
  const Tensor a = fp8.ToTensor(), b = second->ToTensor();
  for (int64_t i = 0; i < 128 * 128; ++i) ASSERT_EQ(b.values[i], a.values[128 * 128 + i]);
  EXPECT_EQ(fp8.SelectRows(0, 2, 64).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(fp8.SelectRows(64, 1, 64).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MappedRangeTest, MapsAnUnalignedRangeAndRefusesOnePastTheEnd) {
  const std::string path = ::testing::TempDir() + "/mapped_range_test.bin";
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  for (int i = 0; i < 10000; ++i) std::fputc(i % 251, f);
  std::fclose(f);
  absl::StatusOr<std::shared_ptr<const MappedRange>> range = MappedRange::Map(path, 4099, 100);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(static_cast<int>((*range)->data()[0]), 4099 % 251);
  EXPECT_EQ(static_cast<int>((*range)->data()[99]), (4099 + 99) % 251);
  absl::StatusOr<std::shared_ptr<const MappedRange>> past = MappedRange::Map(path, 9990, 100);
  EXPECT_THAT(std::string(past.status().message()), HasSubstr("past its end (truncated file?)"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace moex
