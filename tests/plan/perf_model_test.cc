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

// DeepEP's published intranode figures (docs/legacy.md of deepseek-ai/DeepEP:
// H800, ~160 GB/s NVLink, 4096 tokens, hidden 7168, top-4 groups, top-8,
// FP8 dispatch, BF16 combine, EP 8): dispatch 153 GB/s, combine 158 GB/s.
// The model's bytes over its time, at EP 8, within 5% of both.
TEST(PerfModelTest, AgreesWithDeepEpIntranodeFigures) {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  PerfOptions o = Options({8});
  o.samples = 8192;
  PerfReport r = *ModelPerf(arch, o);
  EXPECT_NEAR(r.ep[0].dispatch_gbps, 153, 153 * 0.05);
  EXPECT_NEAR(r.ep[0].combine_gbps, 158, 158 * 0.05);
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
