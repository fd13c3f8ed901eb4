#include "moex/plan/perf_model.h"

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/model_loader.h"

namespace moex::plan {
namespace {

PerfOptions Options(std::vector<int64_t> ep = {8, 16, 64, 256}) {
  PerfOptions o;
  o.cluster = *BuiltinProfile("h800");
  o.ep_sizes = std::move(ep);
  o.samples = 2048;
  return o;
}

TEST(PerfModelTest, DeepSeekV3TrafficFollowsTheTopology) {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  absl::StatusOr<PerfReport> r = ModelPerf(arch, Options());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->ep.size(), 4u);
  const EpPerf& one_node = r->ep[0];
  EXPECT_EQ(one_node.nodes, 1);
  EXPECT_EQ(one_node.dispatch_network_bytes_per_rank, 0);  // all on NVLink
  EXPECT_GT(one_node.dispatch_nvlink_bytes_per_rank, 0);
  for (size_t i = 1; i < r->ep.size(); ++i) {
    const EpPerf& p = r->ep[i];
    EXPECT_GT(p.dispatch_network_bytes_per_rank, 0) << p.ep;
    // Group-limited routing: top-4 of 8 groups, each group on
    // max(1, nodes / 8) nodes, and never more nodes than the 8 experts.
    const double cap = std::min(8.0, 4.0 * std::max<double>(1, static_cast<double>(p.nodes) / 8));
    EXPECT_LE(p.nodes_per_token, cap + 1e-9) << p.ep;
    EXPECT_LE(p.ranks_per_token, 8.0 + 1e-9) << p.ep;
    EXPECT_GE(p.ranks_per_token, r->ep[i - 1].ranks_per_token) << p.ep;
    EXPECT_GT(p.dispatch_us, one_node.dispatch_us) << p.ep;
    EXPECT_NEAR(p.layer_us, p.dispatch_us + p.expert_us + p.combine_us, 1e-6);
  }
  // FP8 dispatch (1 byte + scales) against BF16 combine: combine moves ~1.94x.
  EXPECT_NEAR(r->ep[2].combine_bytes_per_rank / r->ep[2].dispatch_bytes_per_rank, 2.0 / (1.0 + 4.0 / 128), 1e-9);
}

// DeepSeek-V3's layer routed as DeepEP's tests route it (deepseek-ai/DeepEP
// tests/test_intranode.py: top-8 of 256 experts, no groups;
// tests/test_internode.py: the experts grouped by node, top-min(nodes, 4)
// nodes), on the H800 profile.
PerfReport DeepEpSetting(int64_t ep) {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  const int64_t nodes = std::max<int64_t>(1, ep / 8);
  arch.router.num_groups = nodes;
  arch.router.topk_groups = std::min<int64_t>(nodes, 4);
  PerfOptions o = Options({ep});
  o.samples = 8192;
  return *ModelPerf(arch, o);
}

// C(n, k) / C(m, k): the chance that k experts drawn without replacement
// from m all miss a set of m - n.
double AllMiss(int64_t n, int64_t m, int64_t k) {
  double p = 1;
  for (int64_t i = 0; i < k; ++i) p *= static_cast<double>(n - i) / static_cast<double>(m - i);
  return p;
}

// The fan-out the byte counts rest on, against its closed form: top-8 of 256
// experts uniform, 32 on each of 8 ranks; a rank is among a token's
// destinations unless all 8 experts miss its 32. Nothing here is fitted.
TEST(PerfModelTest, FanOutMatchesTheClosedForm) {
  const EpPerf p = DeepEpSetting(8).ep[0];
  const double ranks = 8 * (1 - AllMiss(224, 256, 8));  // 5.29
  EXPECT_NEAR(p.ranks_per_token, ranks, 0.05);
  // DeepSeek-V3's own router (top-4 of 8 groups of 32, one group a rank):
  // 4 allowed ranks, each hit unless all 8 picks from 128 miss its 32.
  PerfReport own = *ModelPerf(*model::LoadModel("deepseek-v3"), Options({8}));
  EXPECT_NEAR(own.ep[0].ranks_per_token, 4 * (1 - AllMiss(96, 128, 8)), 0.05);  // 3.63
}

// Both byte conventions over the same times. moex counts what leaves a rank
// for other ranks; DeepEP counts what a rank receives, its own tokens
// included, so within a node (symmetric placement: the own rank is a
// destination with chance ranks/EP) DeepEP's bytes are EP/(EP-1) of moex's.
// Across nodes DeepEP counts the (token, node) copies, own node included.
TEST(PerfModelTest, DeepEpConventionCountsTheOwnRankAndNode) {
  const EpPerf intra = DeepEpSetting(8).ep[0];
  EXPECT_NEAR(intra.deepep_dispatch_bytes_per_rank / intra.dispatch_bytes_per_rank, 8.0 / 7.0, 0.02);
  EXPECT_NEAR(intra.deepep_dispatch_gbps / intra.dispatch_gbps, 8.0 / 7.0, 0.02);
  const EpPerf inter = DeepEpSetting(16).ep[0];
  EXPECT_NEAR(inter.deepep_dispatch_bytes_per_rank, 4096 * inter.nodes_per_token * 7168 * (1 + 4.0 / 128), 1);
  // Two nodes, top-2 of 2 node groups: nearly every token reaches both.
  EXPECT_NEAR(inter.nodes_per_token, 2 * (1 - AllMiss(128, 256, 8)), 0.02);
}

// DeepEP's published H800 figures (docs/legacy.md of deepseek-ai/DeepEP,
// 4096 tokens, hidden 7168, top-8, FP8 dispatch, BF16 combine), on DeepEP's
// convention: EP 8 (NVLink) dispatch 153 GB/s, combine 158.
// FITTED, not validated: link_efficiency (0.68) was chosen so that EP 8
// dispatch comes out at 153; that half checks only that nobody changed the
// constant without refitting. Combine was not fitted: the model's law
// (bytes / bandwidth, the same for both phases) has to bring it within 5%
// of 158 on its own, and would fail if DeepEP's combine ran at another rate.
TEST(PerfModelTest, IntranodeDeepEpFigureIsFittedAndCombineFollows) {
  const EpPerf p = DeepEpSetting(8).ep[0];
  EXPECT_NEAR(p.deepep_dispatch_gbps, 153, 153 * 0.01);  // the fit
  EXPECT_NEAR(p.deepep_combine_gbps, 158, 158 * 0.05);   // not fitted
}

// Across nodes the model is not validated: on DeepEP's convention it is
// above DeepEP's RDMA figures at EP 16 (43 GB/s) and below them at EP 32
// (58) and 64 (51). These are the ratios docs/plan.md quotes; the test
// keeps the page true when the model changes.
TEST(PerfModelTest, InternodeDisagreementIsWhatThePlanPageSays) {
  EXPECT_NEAR(DeepEpSetting(16).ep[0].deepep_dispatch_gbps / 43, 1.21, 0.05);
  EXPECT_NEAR(DeepEpSetting(32).ep[0].deepep_dispatch_gbps / 58, 0.75, 0.05);
  EXPECT_NEAR(DeepEpSetting(64).ep[0].deepep_dispatch_gbps / 51, 0.71, 0.05);
}

TEST(PerfModelTest, SkewRaisesTheHottestRankAndItsTime) {
  model::ModelArch arch = *model::LoadModel("qwen3-235b-a22b");
  PerfOptions uniform = Options({32});
  PerfOptions skewed = uniform;
  skewed.routing_skew = 1.2;
  PerfReport a = *ModelPerf(arch, uniform), b = *ModelPerf(arch, skewed);
  EXPECT_GT(b.ep[0].rank_imbalance, a.ep[0].rank_imbalance * 1.5);
  EXPECT_GT(b.ep[0].expert_us, a.ep[0].expert_us);
  // The same figures from the same seed.
  EXPECT_EQ(ModelPerf(arch, skewed)->ep[0].dispatch_us, b.ep[0].dispatch_us);
}

TEST(PerfModelTest, BadInputIsNamed) {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  EXPECT_THAT(std::string(BuiltinProfile("a100").status().message()), ::testing::HasSubstr("no cluster profile 'a100'"));
  PerfOptions o = Options();
  o.dispatch_dtype = "int4";
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("--dispatch-dtype 'int4'"));
  o = Options();
  o.load = {1, 2, 3};
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("3 experts, the model 256"));
  model::ModelArch dense = *model::LoadModel("llama-3.1-8b");
  EXPECT_THAT(std::string(ModelPerf(dense, Options()).status().message()), ::testing::HasSubstr("no MoE layer"));
}

}  // namespace
}  // namespace moex::plan
