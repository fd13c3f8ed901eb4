#include "moex/placement/eplb.h"

#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::placement {
namespace {

// The example published with deepseek-ai/EPLB (example.py and its README),
// with the output the reference prints.
TEST(EplbTest, MatchesTheReferenceExample) {
  Matrix weight = {{90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86},
                   {20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27}};
  absl::StatusOr<EplbPlacement> placement = RebalanceExperts(weight, 16, 4, 2, 8);
  ASSERT_TRUE(placement.ok()) << placement.status();
  EXPECT_EQ(placement->phy2log[0], (std::vector<int64_t>{5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1}));
  EXPECT_EQ(placement->phy2log[1], (std::vector<int64_t>{7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1}));
}

TEST(EplbTest, EveryExpertHeldAndLog2phyInvertsPhy2log) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> load(0, 1000);
  Matrix weight(3, std::vector<double>(64));
  for (auto& row : weight) for (double& w : row) w = load(rng);
  struct Shape { int64_t groups, nodes, gpus; };
  // 8 groups over 4 nodes: hierarchical; over 3 nodes they do not divide: global.
  for (Shape shape : {Shape{8, 4, 16}, Shape{8, 3, 12}}) {
    absl::StatusOr<EplbPlacement> p = RebalanceExperts(weight, 96, shape.groups, shape.nodes, shape.gpus);
    ASSERT_TRUE(p.ok()) << p.status();
    for (size_t l = 0; l < weight.size(); ++l) {
      int64_t total = 0;
      for (int64_t e = 0; e < 64; ++e) {
        EXPECT_GE(p->logcnt[l][e], 1);
        total += p->logcnt[l][e];
        for (int64_t r = 0; r < p->logcnt[l][e]; ++r) EXPECT_EQ(p->phy2log[l][p->log2phy[l][e][r]], e);
      }
      EXPECT_EQ(total, 96);
    }
  }
}

TEST(EplbTest, BalancesBetterThanNoReplicas) {
  Matrix weight = {{1000, 10, 10, 10, 10, 10, 10, 10}};
  EplbPlacement p = *RebalanceExperts(weight, 16, 1, 1, 8);
  EXPECT_EQ(p.logcnt[0][0], 9);  // every redundant replica goes to the hot expert
  EXPECT_LT(Imbalance(GpuLoads(weight, p, 8)[0]), 2.5);
}

TEST(EplbTest, BadArgumentsAreNamed) {
  Matrix weight = {{1, 2, 3, 4}};
  EXPECT_THAT(std::string(RebalanceExperts(weight, 3, 1, 1, 1).status().message()), ::testing::HasSubstr("--replicas 3"));
  EXPECT_THAT(std::string(RebalanceExperts(weight, 6, 1, 1, 4).status().message()), ::testing::HasSubstr("multiple of --gpus"));
  EXPECT_THAT(std::string(RebalanceExperts(weight, 8, 3, 1, 4).status().message()), ::testing::HasSubstr("--groups 3"));
  EXPECT_THAT(std::string(RebalanceExperts({{1, -2}}, 2, 1, 1, 1).status().message()), ::testing::HasSubstr("negative"));
}

}  // namespace
}  // namespace moex::placement
