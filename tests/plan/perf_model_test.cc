#include "moex/plan/perf_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

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

// The low-latency mode (runtime/plan/src/perf_low_latency.cc) against the
// published low-latency tables. DeepSeek-V3's layer (hidden 7168, 256
// experts, top-8) routed as DeepEP's tests/test_low_latency.py routes it
// (top-8 of random scores: no groups), 128 tokens a rank, on the H800
// profile.
PerfReport LowLatency(std::vector<int64_t> ep, const std::string& intranode, const std::string& cluster = "h800",
                      const std::string& dispatch_dtype = "fp8") {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  arch.router.num_groups = 1;
  arch.router.topk_groups = 1;
  PerfOptions o = Options(std::move(ep));
  o.cluster = *BuiltinProfile(cluster);
  o.mode = "low-latency";
  o.ll_intranode = intranode;
  o.tokens_per_rank = 128;
  o.dispatch_dtype = dispatch_dtype;
  absl::StatusOr<PerfReport> r = ModelPerf(arch, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : PerfReport{};
}

struct Published {
  int64_t ep;
  double dispatch, combine;  // us (DeepEP) or GB/s (NCCL EP)
};

// Prints predicted vs published, and returns the largest |error| over the
// points not fitted (`fitted`: the EP whose dispatch was fitted, or 0).
double Compare(const char* title, const PerfReport& r, const std::vector<Published>& table, bool gbps,
               int64_t fitted) {
  std::printf("%s\n%6s %22s %22s\n", title, "EP", "dispatch model/pub", "combine model/pub");
  double worst = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    const EpPerf& p = r.ep.at(i);
    EXPECT_EQ(p.ep, table[i].ep);
    const double d = gbps ? p.deepep_dispatch_gbps : p.dispatch_us, c = gbps ? p.deepep_combine_gbps : p.combine_us;
    const double de = d / table[i].dispatch - 1, ce = c / table[i].combine - 1;
    std::printf("%6lld %9.1f/%-6.1f %+5.1f%% %9.1f/%-6.1f %+5.1f%%%s\n", static_cast<long long>(p.ep), d,
                table[i].dispatch, 100 * de, c, table[i].combine, 100 * ce,
                p.ep == fitted ? "  (dispatch fitted)" : "");
    if (p.ep != fitted) worst = std::max(worst, std::abs(de));
    worst = std::max(worst, std::abs(ce));
  }
  std::printf("largest error on the points not fitted: %.1f%%\n", 100 * worst);
  return worst;
}

// The message and byte counts the times rest on; nothing here is fitted.
TEST(PerfModelTest, LowLatencyCountsDeepEpsMessages) {
  const PerfReport r = LowLatency({8, 256}, "rdma");
  ASSERT_EQ(r.ep.size(), 2u);
  EXPECT_EQ(r.mode, "low-latency");
  for (const EpPerf& p : r.ep) {
    // One message per (token, expert): 128 x 8 a rank, whatever EP.
    EXPECT_DOUBLE_EQ(p.ll_messages_per_rank, 128.0 * 8);
    // tests/test_low_latency.py: hidden + hidden / 128 x 4 + 16 (FP8), hidden x 2 (BF16).
    EXPECT_DOUBLE_EQ(p.ll_dispatch_message_bytes, 7168 + 7168 / 128 * 4 + 16);
    EXPECT_DOUBLE_EQ(p.ll_combine_message_bytes, 7168 * 2);
    EXPECT_DOUBLE_EQ(p.deepep_dispatch_bytes_per_rank, 1024.0 * 7408);
    // All but the own rank's messages go through the NIC, same-node ones too.
    EXPECT_EQ(p.dispatch_nvlink_bytes_per_rank, 0);
    EXPECT_NEAR(p.dispatch_network_bytes_per_rank, 1024.0 * (1 - 1.0 / static_cast<double>(p.ep)) * 7408,
                0.01 * p.dispatch_network_bytes_per_rank);
    // The hottest endpoint carries more than the mean: it bounds the batch.
    EXPECT_GT(p.ll_hot_network_messages, p.dispatch_network_bytes_per_rank / 7408);
    EXPECT_EQ(p.ll_sync_us, 5);  // the profile's NIC latency
    // DeepEP's LowLatencyLayout: 2 x (send + receive) at 256 experts x 128
    // slots x (16 + 14336) bytes, plus the signalling words: fixed, not EP's.
    EXPECT_NEAR(p.ll_buffer_bytes_per_rank, 4.0 * 256 * 128 * 14352, 1e4);
  }
  // Same-node messages over NVLink at EP 8: nothing on the NIC.
  const EpPerf nv = LowLatency({8}, "nvlink").ep.at(0);
  EXPECT_EQ(nv.dispatch_network_bytes_per_rank, 0);
  EXPECT_EQ(nv.ll_hot_network_messages, 0);
  EXPECT_EQ(nv.ll_sync_us, 3);  // NVLink's latency
}

// The point: at 128 tokens a rank the normal mode (NVLink
// forwarding, bandwidth at 0.68) gives ~22 us of EP 8 dispatch; DeepEP's
// pure-RDMA low-latency kernels took 163 us.
TEST(PerfModelTest, LowLatencyIsSlowerThanTheNormalModeAtSmallBatches) {
  PerfOptions normal = Options({8});
  normal.tokens_per_rank = 128;
  const EpPerf n = ModelPerf(*model::LoadModel("deepseek-v3"), normal)->ep.at(0);
  const EpPerf ll = LowLatency({8}, "rdma").ep.at(0);
  EXPECT_LT(n.dispatch_us, 30);
  EXPECT_GT(ll.dispatch_us, 5 * n.dispatch_us);
}

// DeepEP's low-latency table as first published (README.md of
// deepseek-ai/DeepEP at ebfe47e4, 2025-02-24: "Low-latency kernels with pure
// RDMA", H800, CX7 400 Gb/s, 128 tokens, hidden 7168, top-8, FP8 dispatch,
// BF16 combine), every rank's messages through the NIC.
// FITTED: ll_efficiency (0.879) on EP 8 dispatch alone (163 us; the sync
// latency is the profile's nic_latency_us, 5 us, not fitted). The other 11
// points (dispatch EP 16-256, all of combine) are checked: within 3%
// (the largest, EP 8 combine, -2.3%).
TEST(PerfModelTest, LowLatencyPureRdmaMatchesDeepEpsFirstTable) {
  const std::vector<Published> deepep = {{8, 163, 318},  {16, 173, 329},  {32, 182, 350},
                                         {64, 186, 353}, {128, 192, 369}, {256, 194, 360}};
  const PerfReport r = LowLatency({8, 16, 32, 64, 128, 256}, "rdma");
  EXPECT_NEAR(r.ep.at(0).dispatch_us, 163, 163 * 0.01);  // the fit
  EXPECT_LE(Compare("DeepEP low-latency, pure RDMA (us)", r, deepep, false, 8), 0.03);
}

// DeepEP's table since its PR #173 (README.md at d8dd185c, 2025-06-05:
// same-node messages over NVLink): EP 8-64 changed, EP 128 and 256 did not.
// FITTED: ll_nvlink_efficiency (0.469) on EP 8 dispatch (77 us). The other
// 11 points are checked, and agree less: within 30%, EP 8 combine +28% (the
// NVLink combine is faster than bytes / bandwidth at the dispatch's rate)
// and EP 16 dispatch -17%; the other nine within 7%.
TEST(PerfModelTest, LowLatencyNvlinkAgainstDeepEpsCurrentTable) {
  const std::vector<Published> deepep = {{8, 77, 114},   {16, 118, 195},  {32, 155, 273},
                                         {64, 173, 314}, {128, 192, 369}, {256, 194, 360}};
  const PerfReport r = LowLatency({8, 16, 32, 64, 128, 256}, "nvlink");
  EXPECT_NEAR(r.ep.at(0).dispatch_us, 77, 77 * 0.01);  // the fit
  EXPECT_LE(Compare("DeepEP low-latency since PR #173, NVLink within a node (us)", r, deepep, false, 8), 0.30);
}

// NCCL EP's LL reference figures (NVIDIA/nccl contrib/nccl_ep/README.md,
// NCCL 2.29u1, H100, BF16 dispatch and combine, 128 tokens, hidden 7168,
// top-8, 256 experts), GB/s over hidden x 2 per selected (token, expert)
// (ep_bench.cu's calculateLowLatencyBytes), NVLink within a node. Nothing
// fitted on them: the H100 profile with DeepEP's fitted efficiencies.
// Within 20%: EP 8 combine +19%, the other seven within 9%.
TEST(PerfModelTest, LowLatencyNvlinkAgainstNcclEp) {
  const std::vector<Published> nccl = {{8, 224.3, 185.2}, {16, 76.7, 73.0}, {32, 53.6, 50.0}, {64, 48.8, 43.8}};
  const PerfReport r = LowLatency({8, 16, 32, 64}, "nvlink", "h100", "bf16");
  for (const EpPerf& p : r.ep) {
    EXPECT_DOUBLE_EQ(p.deepep_combine_bytes_per_rank, 1024.0 * 14336);
  }
  EXPECT_LE(Compare("NCCL EP low-latency, H100, BF16 (GB/s)", r, nccl, true, 0), 0.20);
}

TEST(PerfModelTest, LowLatencyBadInputIsNamed) {
  model::ModelArch arch = *model::LoadModel("deepseek-v3");
  PerfOptions o = Options({8});
  o.mode = "fast";
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("--mode 'fast'"));
  o.mode = "low-latency";
  o.ll_intranode = "pcie";
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("--ll-intranode 'pcie'"));
  o.ll_intranode = "rdma";
  o.combine_dtype = "fp32";
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("--combine-dtype 'fp32'"));
  o.combine_dtype = "bf16";
  o.tokens_per_rank = 8192;
  EXPECT_THAT(std::string(ModelPerf(arch, o).status().message()), ::testing::HasSubstr("--tokens-per-rank 8192"));
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
