#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {
namespace {

TEST(DispatchLayoutTest, TokenCrossesToARankOnce) {
  Placement p = *Placement::Contiguous(8, 2);  // experts 0-3 on rank 0, 4-7 on rank 1
  // token 0 -> experts 4, 5 (both rank 1); token 1 -> 0, 7; token 2 -> 1, 2.
  std::vector<int32_t> topk = {4, 5, 0, 7, 1, 2};
  DispatchLayout layout = GetDispatchLayout(p, topk.data(), 3, 2, 0);
  EXPECT_EQ(layout.num_tokens_per_rank, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(layout.is_token_in_rank, (std::vector<uint8_t>{0, 1, 1, 1, 1, 0}));
  EXPECT_EQ(layout.num_tokens_per_expert, (std::vector<int64_t>{1, 1, 1, 0, 1, 1, 0, 1}));
}

}  // namespace
}  // namespace moex::ep
