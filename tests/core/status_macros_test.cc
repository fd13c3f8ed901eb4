#include "moex/core/status_macros.h"

#include "gtest/gtest.h"
#include "moex/core/str_cat.h"

namespace moex {
namespace {

absl::StatusOr<int> Half(int value) {
  if (value % 2 != 0) return absl::InvalidArgumentError(StrCat(value, " is odd"));
  return value / 2;
}

absl::StatusOr<int> Quarter(int value) {
  MOEX_ASSIGN_OR_RETURN(int half, Half(value));
  MOEX_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckEven(int value) {
  MOEX_RETURN_IF_ERROR(Half(value).status());
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnPassesValuesAndErrors) {
  EXPECT_EQ(*Quarter(12), 3);
  absl::StatusOr<int> odd = Quarter(6);  // 6 -> 3, odd
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().message(), "3 is odd");
}

TEST(StatusMacrosTest, ReturnIfErrorStopsAtTheFirstError) {
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(5).code(), absl::StatusCode::kInvalidArgument);
}

TEST(StrCatTest, AcceptsStdStringView) {
  std::string_view view = "experts";
  EXPECT_EQ(StrCat(256, " ", view), "256 experts");
  std::string out = "a";
  StrAppend(&out, view, 1);
  EXPECT_EQ(out, "aexperts1");
}

}  // namespace
}  // namespace moex
