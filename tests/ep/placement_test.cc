#include "moex/ep/placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;

TEST(PlacementTest, ContiguousSplitsSlotsEvenly) {
  Placement p = *Placement::Contiguous(10, 3);
  EXPECT_EQ(p.num_local_slots(0), 3);
  EXPECT_EQ(p.num_local_slots(1), 3);
  EXPECT_EQ(p.num_local_slots(2), 4);
  EXPECT_EQ(p.slot_rank(9), 2);
  EXPECT_EQ(p.first_slot(2), 6);
}

TEST(PlacementTest, ReplicasShareTheLoadDeterministically) {
  Placement p = *Placement::Contiguous(8, 4, /*num_redundant=*/4);
  ASSERT_EQ(p.num_slots(), 12);
  // Replicas of experts 0, 2, 4, 6 sit at the end (ranks 2 and 3).
  EXPECT_EQ(p.expert_slots(0), (std::vector<int64_t>{0, 8}));
  EXPECT_EQ(p.ChooseSlot(0, 10), 0);
  EXPECT_EQ(p.ChooseSlot(0, 11), 8);
  EXPECT_EQ(p.expert_slots(1).size(), 1u);
}

TEST(PlacementTest, RefusesWorldItCannotFill) {
  absl::StatusOr<Placement> p = Placement::Contiguous(4, 6);
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), HasSubstr("cannot fill 6 ranks: there are only 4 expert slots"));
  EXPECT_TRUE(Placement::Contiguous(4, 6, 2).ok());
  EXPECT_THAT(std::string(Placement::FromSlots(3, {0, 1, 1}, {1, 2}).status().message()),
              HasSubstr("expert 2 has no slot"));
}

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
