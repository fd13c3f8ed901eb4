#include "moex/placement/moex_policy.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::placement {
namespace {

struct Shape {
  const char* name;
  int64_t experts, replicas, groups, nodes, gpus;
};

// The two shapes: DeepSeek-V3 (256 experts in 8 groups, 32
// redundant, 4 nodes x 8 GPUs: hierarchical) and Kimi K2 (384 experts, one
// group, 64 redundant, 8 x 8: global).
const Shape kShapes[] = {{"dsv3", 256, 288, 8, 4, 32}, {"kimi_k2", 384, 448, 1, 8, 64}};

PlanInput Input(const Shape& s, Matrix load, IndexMatrix current = {}) {
  return {.load = std::move(load), .num_replicas = s.replicas, .num_groups = s.groups, .num_nodes = s.nodes,
          .num_gpus = s.gpus, .current = std::move(current)};
}

double LayerImbalance(const Matrix& load, const EplbPlacement& p, int64_t gpus, size_t layer) {
  return Imbalance(GpuLoads(load, p, gpus)[layer]);
}

void ExpectValid(const Shape& s, const EplbPlacement& p) {
  for (size_t l = 0; l < p.phy2log.size(); ++l) {
    ASSERT_EQ(static_cast<int64_t>(p.phy2log[l].size()), s.replicas);
    std::vector<int64_t> count(s.experts, 0);
    for (int64_t e : p.phy2log[l]) ++count[e];
    for (int64_t e = 0; e < s.experts; ++e) {
      ASSERT_GE(count[e], 1) << "expert " << e << " lost";
      EXPECT_EQ(count[e], p.logcnt[l][e]);
      for (int64_t r = 0; r < count[e]; ++r) EXPECT_EQ(p.phy2log[l][p.log2phy[l][e][r]], e);
    }
    if (IsHierarchical(s.groups, s.nodes)) {  // a group's replicas stay on one node
      const int64_t per_node = s.replicas / s.nodes, group_size = s.experts / s.groups;
      std::vector<std::set<int64_t>> nodes(s.groups);
      for (int64_t slot = 0; slot < s.replicas; ++slot) nodes[p.phy2log[l][slot] / group_size].insert(slot / per_node);
      for (const auto& n : nodes) EXPECT_EQ(n.size(), 1u);
    }
  }
}

class MoexPolicyTest : public ::testing::TestWithParam<Shape> {};

TEST_P(MoexPolicyTest, NeverWorseThanEplbAndBetterOnAverage) {
  const Shape& s = GetParam();
  double eplb_sum = 0, moex_sum = 0;
  const int seeds = 6;
  for (int seed = 0; seed < seeds; ++seed) {
    Matrix load = ZipfLoad(2, s.experts, 1.0, seed);
    EplbPlacement eplb = *PlanPlacement("eplb", Input(s, load));
    absl::StatusOr<EplbPlacement> moex = PlanPlacement("moex", Input(s, load));
    ASSERT_TRUE(moex.ok()) << moex.status();
    ExpectValid(s, *moex);
    std::vector<double> bound = LoadLowerBound(load, s.replicas, s.gpus);
    for (size_t l = 0; l < load.size(); ++l) {
      double e = LayerImbalance(load, eplb, s.gpus, l), m = LayerImbalance(load, *moex, s.gpus, l);
      EXPECT_LE(m, e + 1e-9) << "seed " << seed << " layer " << l;
      double total = 0;
      for (double w : load[l]) total += w;
      EXPECT_GE(m, bound[l] * s.gpus / total - 1e-9);
      eplb_sum += e, moex_sum += m;
    }
  }
  EXPECT_LT(moex_sum, eplb_sum) << "moex mean " << moex_sum / (2 * seeds) << ", eplb " << eplb_sum / (2 * seeds);
}

TEST_P(MoexPolicyTest, KnowingTheCurrentPlacementMovesFewerExpertsAtTheSameBalance) {
  const Shape& s = GetParam();
  for (int seed = 0; seed < 3; ++seed) {
    Matrix before = ZipfLoad(1, s.experts, 1.0, 100 + seed);
    IndexMatrix current = PlanPlacement("moex", Input(s, before))->phy2log;
    Matrix after = Drift(before, 0.5, 200 + seed);
    EplbPlacement scratch = *PlanPlacement("moex", Input(s, after));
    EplbPlacement eplb = *PlanPlacement("eplb", Input(s, after));
    absl::StatusOr<EplbPlacement> aware = PlanPlacement("moex", Input(s, after, current));
    ASSERT_TRUE(aware.ok()) << aware.status();
    ExpectValid(s, *aware);
    EXPECT_LE(LayerImbalance(after, *aware, s.gpus, 0), LayerImbalance(after, scratch, s.gpus, 0) * (1 + 1e-6));
    int64_t moved = CountMoves({current}, aware->phy2log, s.gpus);
    EXPECT_LT(moved, CountMoves({current}, scratch.phy2log, s.gpus)) << "seed " << seed;
    EXPECT_LT(moved, CountMoves({current}, eplb.phy2log, s.gpus)) << "seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoexPolicyTest, ::testing::ValuesIn(kShapes),
                         [](const ::testing::TestParamInfo<Shape>& p) { return std::string(p.param.name); });

TEST(MoexPolicy, UnchangedLoadMovesNothing) {
  const Shape s{"small", 16, 24, 4, 2, 8};
  Matrix load = ZipfLoad(1, s.experts, 1.2, 7);
  IndexMatrix current = PlanPlacement("moex", Input(s, load))->phy2log;
  EplbPlacement again = *PlanPlacement("moex", Input(s, load, current));
  EXPECT_EQ(CountMoves({current}, again.phy2log, s.gpus), 0);
}

TEST(MoexPolicy, BadCurrentPlacementIsNamed) {
  const Shape s{"small", 8, 8, 1, 1, 4};
  Matrix load = {{1, 2, 3, 4, 5, 6, 7, 8}};
  auto message = [&](IndexMatrix current) {
    return std::string(PlanPlacement("moex", Input(s, load, std::move(current))).status().message());
  };
  EXPECT_THAT(message({{0, 1, 2, 3, 4, 5, 6}}), ::testing::HasSubstr("7 slots, --replicas is 8"));
  EXPECT_THAT(message({{0, 1, 2, 3, 4, 5, 6, 9}}), ::testing::HasSubstr("expert 9 in slot 7"));
  EXPECT_THAT(message({{0, 1, 2, 3, 4, 5, 6, 6}}), ::testing::HasSubstr("no replica of expert 7"));
  EXPECT_THAT(std::string(PlanPlacement("greedy", Input(s, load)).status().message()),
              ::testing::HasSubstr("'greedy' is not one of eplb, moex"));
}

}  // namespace
}  // namespace moex::placement
