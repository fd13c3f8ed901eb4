#include "moex/core/tensor.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace moex {
namespace {

float FromBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// A bf16 NaN: exponent all ones, a non-zero mantissa. Quiet: the mantissa's
// top bit (0x40 of the bf16 half) set.
bool IsQuietBf16Nan(uint16_t bits) { return (bits & 0x7f80u) == 0x7f80u && (bits & 0x40u) != 0; }

TEST(Bf16Test, RoundsToNearestEven) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
  // 0x3f808000 lies halfway between bf16 0x3f80 and 0x3f81: to the even one.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);
  // Halfway between 0x3f81 and 0x3f82: again to the even one, upwards.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);
  // Just past halfway rounds up, just short of it down.
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f807fffu)), 0x3f80);
  // Every bf16 value converts back to itself.
  EXPECT_EQ(FloatToBf16(Bf16ToFloat(0x4049)), 0x4049);
}

TEST(Bf16Test, InfinitiesStayInfiniteAndOverflowRoundsToThem) {
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  // FLT_MAX is past bf16's largest finite value (0x7f7f) by more than half
  // an ulp: round to nearest gives infinity.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);
}

TEST(Bf16Test, NanStaysAQuietNan) {
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::quiet_NaN()), 0x7fc0);
  // A NaN whose payload lies only in the 16 bits bf16 drops: truncating it
  // would leave 0x7f80, infinity; rounding it would too.
  EXPECT_EQ(FloatToBf16(FromBits(0x7f800001u)), 0x7fc0);
  EXPECT_EQ(FloatToBf16(FromBits(0xff800001u)), 0xffc0);
  // A signalling NaN comes back quiet, its sign and high payload kept.
  EXPECT_EQ(FloatToBf16(FromBits(0x7fa00000u)), 0x7fe0);
  // The largest payload must not carry into the sign bit.
  EXPECT_EQ(FloatToBf16(FromBits(0x7fffffffu)), 0x7fff);
  for (uint32_t bits : {0x7f800001u, 0x7f80ffffu, 0x7fbfffffu, 0x7fc00000u, 0xffffffffu}) {
    uint16_t half = FloatToBf16(FromBits(bits));
    EXPECT_TRUE(IsQuietBf16Nan(half)) << std::hex << bits << " -> " << half;
    EXPECT_TRUE(std::isnan(Bf16ToFloat(half))) << std::hex << bits;
  }
}

}  // namespace
}  // namespace moex
