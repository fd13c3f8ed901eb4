// The expert-parallel layer on in-process ranks against the single-process
// reference: world sizes 1-5, top-k 1-8, both router kinds, replicas, token
// counts that do not divide, ranks with no tokens, experts with none; on
// every dispatch path (per peer over every split of the ranks into hosts),
// all giving the same bits.
#include "moex/ep/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#include "dispatch_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/model_loader.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::ep {
namespace {

struct Case {
  const char* name;
  int world;
  int64_t tokens;
  int64_t experts;
  int64_t top_k;
  int64_t redundant;
  bool sigmoid;
  int64_t shared_width;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

MoeLayerSpec SpecFor(const Case& c) {
  MoeLayerSpec spec;
  spec.model_type = c.sigmoid ? "deepseek_v3" : "qwen3_moe";
  spec.layer = 1;
  spec.hidden = 32;
  spec.num_experts = c.experts;
  spec.top_k = c.top_k;
  spec.expert_width = 24;
  spec.shared_width = c.shared_width;
  if (c.sigmoid) {
    spec.router.scoring = "sigmoid";
    spec.router.num_groups = 4;
    spec.router.topk_groups = 2;
    spec.router.routed_scaling_factor = 2.5;
    spec.router.has_correction_bias = true;
    spec.router.norm_topk_prob = true;
  } else {
    spec.router.norm_topk_prob = c.top_k > 1;
  }
  return spec;
}

Tensor RandomTokens(int64_t tokens, int64_t hidden, uint64_t seed) {
  Tensor x({tokens, hidden});
  for (int64_t i = 0; i < x.size(); ++i) x.values[i] = SeededUniform(seed, "tokens", i);
  return x;
}

class MoeLayerTest : public ::testing::TestWithParam<Case> {};

// The layer's output on every rank of `c`, with each rank's dispatch
// options from `options_of` (their path is the one taken); the dropless
// count of served pairs in `pairs`.
Tensor RunLayer(const Case& c, const MoeLayerSpec& spec, const Placement& placement, const Tensor& x,
                const std::function<DispatchOptions(int)>& options_of, int64_t* pairs) {
  Tensor got({c.tokens, spec.hidden});
  std::vector<int64_t> served(c.world, 0);
  transport::InProcessHub hub(c.world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < c.world; ++r) {
    ranks.emplace_back([&, r] {
      std::unique_ptr<transport::Transport> t = hub.Connect(r);
      std::vector<int64_t> mine;
      for (int64_t s = 0; s < placement.num_local_slots(r); ++s) {
        mine.push_back(placement.slot_expert(placement.first_slot(r) + s));
      }
      absl::StatusOr<MoeWeights> weights = LoadMoeWeights(spec, nullptr, 42, mine);
      ASSERT_TRUE(weights.ok()) << weights.status();
      const DispatchOptions options = options_of(r);
      absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(*t, options, Deadline::InSeconds(30));
      ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
      absl::StatusOr<MoeLayer> layer = MoeLayer::Create(spec, placement, *weights, std::move(*dispatcher));
      ASSERT_TRUE(layer.ok()) << layer.status();
      EXPECT_EQ(layer->DataPath(), DispatchPathName(options.path)) << layer->DataPathReason();
      auto [first, count] = TokenSlice(c.tokens, c.world, r);
      Tensor local({count, spec.hidden});
      for (int64_t i = 0; i < count * spec.hidden; ++i) local.values[i] = x.values[first * spec.hidden + i];
      StepStats stats;
      // Two steps: buffers reused across steps must not leak state.
      Tensor y;
      for (int step = 0; step < 2; ++step) {
        absl::Status status = layer->Forward(*t, local, {}, first, Deadline::InSeconds(30), &y, &stats);
        ASSERT_TRUE(status.ok()) << status;
        for (int64_t i = 0; i < count * spec.hidden; ++i) got.values[first * spec.hidden + i] = y.values[i];
      }
      served[r] = stats.routed_pairs;
    });
  }
  for (std::thread& rank : ranks) rank.join();
  *pairs = 0;
  for (int64_t n : served) *pairs += n;
  return got;
}

// A case's layer, placement, tokens, every expert's weights and the ranks'
// token slices.
struct LayerCase {
  explicit LayerCase(const Case& c)
      : spec(SpecFor(c)),
        placement(*Placement::Contiguous(c.experts, c.world, c.redundant)),
        x(RandomTokens(c.tokens, spec.hidden, 7)) {
    std::vector<int64_t> all_experts;
    for (int64_t e = 0; e < c.experts; ++e) all_experts.push_back(e);
    all = *LoadMoeWeights(spec, nullptr, 42, all_experts);
    for (int r = 0; r < c.world; ++r) slices.push_back(TokenSlice(c.tokens, c.world, r).second);
  }
  Tensor Reference(DispatchDtype dtype = DispatchDtype::kFp32) const {
    return *ReferenceForward(spec, all, x, {}, slices, dtype);
  }
  MoeLayerSpec spec;
  Placement placement;
  Tensor x;
  MoeWeights all;
  std::vector<int64_t> slices;
};

TEST_P(MoeLayerTest, MatchesTheReferenceOnEveryPath) {
  const Case& c = GetParam();
  const LayerCase setup(c);
  const MoeLayerSpec& spec = setup.spec;
  const Placement& placement = setup.placement;
  const Tensor& x = setup.x;
  Tensor expected = setup.Reference();
  double scale = 0;
  for (int64_t i = 0; i < expected.size(); ++i) scale = std::max(scale, std::fabs(double{expected.values[i]}));

  // Shared memory, all-to-all-v, and per peer and hierarchical on every
  // split into hosts.
  struct Run {
    std::string name;
    std::function<DispatchOptions(int)> options_of;
    std::unique_ptr<testing::HostDirectories> hosts;
    bool flat = true;  // the flat paths' bits are one
  };
  std::vector<Run> runs;
  runs.push_back({"shared memory", [](int) { return DispatchOptions{.path = DispatchPath::kSharedMemory}; }, nullptr});
  runs.push_back({"all-to-all-v", [](int) { return DispatchOptions{.path = DispatchPath::kAllToAllV}; }, nullptr});
  for (const testing::HostSplit& split : testing::HostSplits(c.world)) {
    auto hosts = std::make_unique<testing::HostDirectories>(split);
    const testing::HostDirectories* dirs = hosts.get();
    runs.push_back({"per peer, hosts " + split.name, [dirs](int r) { return dirs->options(r, DispatchPath::kPerPeer); },
                    std::move(hosts)});
    runs.push_back({"hierarchical, hosts " + split.name,
                    [dirs](int r) { return dirs->options(r, DispatchPath::kHierarchical); }, nullptr, false});
    // Twice: the hierarchical path's own bits do not change between runs.
    runs.push_back({"hierarchical again, hosts " + split.name,
                    [dirs](int r) { return dirs->options(r, DispatchPath::kHierarchical); }, nullptr, false});
  }
  std::vector<Tensor> outputs;
  for (const Run& run : runs) {
    SCOPED_TRACE(run.name);
    int64_t pairs = 0;
    outputs.push_back(RunLayer(c, spec, placement, x, run.options_of, &pairs));
    const Tensor& got = outputs.back();
    double worst = 0;
    for (int64_t i = 0; i < expected.size(); ++i) {
      worst = std::max(worst, std::fabs(double{expected.values[i]} - got.values[i]));
    }
    EXPECT_LE(worst, 1e-4 * std::max(scale, 1e-30)) << "max |error| " << worst << ", output scale " << scale;
    EXPECT_EQ(pairs, c.tokens * c.top_k) << "dropless: every routed pair is served once";
    // One row order on every flat path, sums added in the same order: the
    // same bits. The hierarchical path adds a host's sums first: its own
    // bits, the same on every run.
    const Tensor& same = run.flat ? outputs[0] : outputs[outputs.size() > 1 ? outputs.size() - 2 : 0];
    if (run.flat || run.name.rfind("hierarchical again", 0) == 0) {
      EXPECT_TRUE(got.values.empty() || std::memcmp(same.data(), got.data(), got.values.size() * sizeof(float)) == 0)
          << run.name << " disagrees with " << (run.flat ? "shared memory" : "the run before") << " bit for bit";
    }
  }
}

// FP8 between hosts: the layer matches the reference whose routed experts
// see the rows' fp8 read-back (to fp32 summation), on the paths that send
// rows over the network, and is measurably not the fp32 layer.
TEST_P(MoeLayerTest, Fp8DispatchMatchesTheFp8Reference) {
  const Case& c = GetParam();
  const LayerCase setup(c);
  const Tensor fp8 = setup.Reference(DispatchDtype::kFp8);
  const Tensor fp32 = setup.Reference();
  double scale = 0;
  for (float v : fp8.values) scale = std::max(scale, std::fabs(double{v}));
  // Ranks on hosts of their own pairwise (0011...), so that per peer and
  // hierarchical send rows over the network and through shared memory.
  testing::HostSplit split{.name = "pairs", .host_of = {}};
  for (int r = 0; r < c.world; ++r) split.host_of.push_back(r / 2);
  testing::HostDirectories dirs(split);
  for (const DispatchPath path : {DispatchPath::kAllToAllV, DispatchPath::kPerPeer, DispatchPath::kHierarchical}) {
    SCOPED_TRACE(std::string(DispatchPathName(path)));
    int64_t pairs = 0;
    const Tensor got = RunLayer(c, setup.spec, setup.placement, setup.x, [&](int r) {
      DispatchOptions options = path == DispatchPath::kAllToAllV ? DispatchOptions{.path = path} : dirs.options(r, path);
      options.dtype = DispatchDtype::kFp8;
      return options;
    }, &pairs);
    double worst = 0, from_fp32 = 0;
    for (int64_t i = 0; i < fp8.size(); ++i) {
      worst = std::max(worst, std::fabs(double{fp8.values[i]} - got.values[i]));
      from_fp32 = std::max(from_fp32, std::fabs(double{fp32.values[i]} - got.values[i]));
    }
    EXPECT_LE(worst, 1e-4 * std::max(scale, 1e-30)) << "max |error| " << worst << ", output scale " << scale;
    if (c.tokens > 0) {
      EXPECT_GT(from_fp32, 1e-3 * scale) << "fp8 rows should not give the fp32 layer's output";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoeLayerTest,
    ::testing::Values(Case{"world1_top2", 1, 37, 8, 2, 0, false, 0},
                      Case{"world2_top1", 2, 50, 8, 1, 0, false, 0},
                      Case{"world3_uneven_top4", 3, 101, 16, 4, 0, false, 0},
                      Case{"world4_sigmoid_groups_shared", 4, 64, 16, 4, 0, true, 48},
                      Case{"world5_top8", 5, 23, 16, 8, 0, false, 0},
                      Case{"world4_replicas", 4, 80, 8, 2, 4, false, 24},
                      Case{"world4_fewer_tokens_than_ranks", 4, 2, 8, 2, 0, true, 0},
                      Case{"world3_no_tokens", 3, 0, 8, 2, 0, false, 0},
                      Case{"world2_top8_sigmoid", 2, 40, 16, 8, 0, true, 0}),
    [](const ::testing::TestParamInfo<Case>& param_info) { return std::string(param_info.param.name); });

TEST(MoeLayerSpecTest, RefusesWhatItCannotRun) {
  // A field that changes the maths beyond what moex implements: named.
  absl::StatusOr<MoeLayerSpec> pnorm =
      MoeLayerSpec::FromArch(*model::LoadModel(MOEX_TEST_FIXTURES "/configs/dbrx_pnorm2.json"), std::nullopt);
  EXPECT_EQ(pnorm.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(pnorm.status().message()), ::testing::HasSubstr("moe_normalize_expert_weights = 2"));
  EXPECT_EQ(MoeLayerSpec::FromArch(*model::LoadModel("llama-3.1-8b"), std::nullopt).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoeLayerSpec::FromArch(*model::LoadModel("deepseek-v3"), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  MoeLayerSpec spec = *MoeLayerSpec::FromArch(*model::LoadModel("deepseek-v3"), std::nullopt);
  EXPECT_EQ(spec.layer, 3);
  EXPECT_EQ(spec.shared_width, 2048);
  // 256 experts of 44.04M + shared + router + bias.
  EXPECT_EQ(spec.total_params(), 256LL * 44040192 + 44040192 + 256LL * 7168 + 256);
}

// The layer's parameters as the runtime counts them (its weights, biases
// and router) equal the planner's count of that layer, family by family.
TEST(MoeLayerSpecTest, EachFamilysLayerHasThePlannersParameterCount) {
  for (const char* preset : {"deepseek-v3", "kimi-k2", "qwen3-30b-a3b", "qwen1.5-moe-a2.7b", "mixtral-8x7b",
                             "olmoe-1b-7b", "jamba-v0.1", "dbrx", "llama4-scout", "llama4-maverick", "gpt-oss-20b",
                             "gpt-oss-120b", "nemotron-3-nano-30b-a3b", "qwen3-next-80b-a3b", "qwen3.5-397b-a17b"}) {
    SCOPED_TRACE(preset);
    const model::ModelArch arch = *model::LoadModel(preset);
    absl::StatusOr<MoeLayerSpec> spec = MoeLayerSpec::FromArch(arch, std::nullopt);
    ASSERT_TRUE(spec.ok()) << spec.status();
    const model::MoeShape& moe = arch.layers[spec->layer].moe;
    EXPECT_EQ(spec->total_params(), moe.num_experts * moe.params_per_expert + moe.shared_params + moe.router_params);
  }
}

// An expert travels (live migration, the weight cache's copy) as its bytes:
// biases and a missing gate included.
TEST(ExpertWeightsTest, BytesRoundTripForEveryMlpShape) {
  for (const char* preset : {"gpt-oss-20b", "nemotron-3-nano-30b-a3b", "mixtral-8x7b"}) {
    SCOPED_TRACE(preset);
    MoeLayerSpec spec = *MoeLayerSpec::FromArch(*model::LoadModel(preset), std::nullopt);
    spec.hidden = 64;  // small, same shape otherwise
    spec.expert_width = 32;
    spec.shared_width = std::min<int64_t>(spec.shared_width, 32);
    absl::StatusOr<MoeWeights> w = LoadMoeWeights(spec, nullptr, 5, {1});
    ASSERT_TRUE(w.ok()) << w.status();
    const ExpertWeights& e = w->experts.at(1);
    EXPECT_EQ(e.bytes(), ExpertBytes(spec));
    EXPECT_EQ(e.gate.empty(), !spec.mlp.gated());
    EXPECT_EQ(e.down_bias.size(), spec.mlp.biases ? 64u : 0u);
    std::vector<std::byte> bytes(e.bytes());
    e.CopyBytes(bytes.data());
    const ExpertWeights back = ExpertWeights::FromBytes(spec, e.format(), bytes.data());
    EXPECT_EQ(back.up.ToTensor().values, e.up.ToTensor().values);
    EXPECT_EQ(back.down.ToTensor().values, e.down.ToTensor().values);
    if (spec.mlp.gated()) {
      EXPECT_EQ(back.gate.ToTensor().values, e.gate.ToTensor().values);
    }
    EXPECT_EQ(back.gate_bias, e.gate_bias);
    EXPECT_EQ(back.up_bias, e.up_bias);
    EXPECT_EQ(back.down_bias, e.down_bias);
  }
}

}  // namespace
}  // namespace moex::ep
