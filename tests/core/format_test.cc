#include "moex/core/format.h"

#include "gtest/gtest.h"

namespace moex {
namespace {

TEST(FormatTest, CountsUseDecimalSuffixes) {
  EXPECT_EQ(FormatCount(671026419200.0), "671.03B");
  EXPECT_EQ(FormatCount(1.6e12), "1.60T");
  EXPECT_EQ(FormatCount(7168), "7.17K");
  EXPECT_EQ(FormatCount(12), "12");
}

TEST(FormatTest, BytesUseBinarySuffixes) {
  EXPECT_EQ(FormatBytes(1342177280.0), "1.25 GiB");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(-2.0 * kGiB), "-2.00 GiB");
}

TEST(FormatTest, FlopsUseDecimalSuffixes) { EXPECT_EQ(FormatFlops(7.4e10), "74.00 GFLOP"); }

}  // namespace
}  // namespace moex
