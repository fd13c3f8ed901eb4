#include "moex/placement/placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::placement {
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

TEST(PlacementTest, CarriesAVersion) {
  Placement p = *Placement::Contiguous(4, 2);
  EXPECT_EQ(p.version(), 1);
  Placement next = *Placement::FromSlots(4, {1, 0, 3, 2}, {2, 2}, 3);
  EXPECT_EQ(next.version(), 3);
  EXPECT_FALSE(next.SameSlots(p));
  EXPECT_TRUE(p.WithVersion(7).SameSlots(p));
  EXPECT_EQ(p.WithVersion(7).version(), 7);
  EXPECT_THAT(std::string(Placement::FromSlots(4, {0, 1, 2, 3}, {2, 2}, 0).status().message()),
              HasSubstr("version 0"));
}

}  // namespace
}  // namespace moex::placement
