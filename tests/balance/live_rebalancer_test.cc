// Live rebalancing on in-process ranks: outputs before, during and after a
// placement change equal the single-process reference token for token; a
// rank that goes silent mid-migration fails the step on every other rank,
// naming it, and nobody serves a half-moved placement.
#include "moex/balance/live_rebalancer.h"

#include <cmath>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/moe_layer.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::balance {
namespace {

ep::MoeLayerSpec Spec() {
  ep::MoeLayerSpec spec;
  spec.model_type = "qwen3_moe";
  spec.hidden = 32;
  spec.num_experts = 16;
  spec.top_k = 4;
  spec.expert_width = 24;
  spec.router.norm_topk_prob = true;
  return spec;
}

// Tokens whose routing is skewed: every token leans towards the same few
// experts' router rows.
Tensor SkewedTokens(const ep::MoeLayerSpec& spec, const ep::MoeWeights& all, int64_t tokens, uint64_t seed) {
  Tensor x({tokens, spec.hidden});
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < spec.hidden; ++h) {
      x.row(t)[h] = ep::SeededUniform(seed, "tokens", t * spec.hidden + h) + 2.0f * all.router.row(t % 3)[h];
    }
  }
  return x;
}

struct RankResult {
  absl::Status status;
  int64_t version = 0;
  std::vector<RebalanceEvent> events;
  std::vector<int64_t> final_slots;
};

struct Steps {
  std::vector<Tensor> outputs;  // per step, all tokens
  std::vector<RankResult> ranks;
};

// `silent_rank` stops taking part before the migration's first chunk.
Steps RunSteps(int world, int64_t steps, RebalanceOptions options, int silent_rank = -1) {
  ep::MoeLayerSpec spec = Spec();
  std::vector<int64_t> every(spec.num_experts);
  for (int64_t e = 0; e < spec.num_experts; ++e) every[e] = e;
  ep::MoeWeights all = *ep::LoadMoeWeights(spec, nullptr, 5, every);
  const int64_t tokens = 40;
  Steps run;
  run.outputs.assign(steps, Tensor({tokens, spec.hidden}));
  run.ranks.resize(world);
  transport::InProcessHub hub(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r, options]() mutable {
      std::unique_ptr<transport::Transport> t = hub.Connect(r);
      placement::Placement initial = *placement::Placement::Contiguous(spec.num_experts, world, 4);
      std::vector<int64_t> mine;
      for (int64_t s = 0; s < initial.num_local_slots(r); ++s) mine.push_back(initial.slot_expert(initial.first_slot(r) + s));
      ep::MoeLayer layer =
          *ep::MoeLayer::Create(spec, initial, *ep::LoadMoeWeights(spec, nullptr, 5, mine), *t, Deadline::InSeconds(10));
      struct Silent {};
      if (r == silent_rank) options.before_chunk = [](int64_t) { throw Silent{}; };
      absl::StatusOr<LiveRebalancer> rebalancer = LiveRebalancer::Create(options, layer, world);
      RankResult& result = run.ranks[r];
      if (!rebalancer.ok()) {
        result.status = rebalancer.status();
        return;
      }
      auto [first, count] = ep::TokenSlice(tokens, world, r);
      Tensor y;
      try {
        for (int64_t step = 0; step < steps && result.status.ok(); ++step) {
          Tensor x_all = SkewedTokens(spec, all, tokens, 100 + step);
          Tensor x({count, spec.hidden});
          std::copy(x_all.row(first), x_all.row(first) + count * spec.hidden, x.values.begin());
          Deadline deadline = Deadline::InSeconds(2);
          ep::StepStats stats;
          result.status = rebalancer->BeginStep(*t, layer, step, std::nullopt, deadline);
          if (result.status.ok()) result.status = layer.Forward(*t, x, {}, first, deadline, &y, &stats);
          if (!result.status.ok()) break;
          std::copy(y.values.begin(), y.values.end(), run.outputs[step].row(first));
          std::vector<int64_t> load = layer.TokensPerExpert(stats);
          result.status = t->AllReduceSum(std::span<int64_t>(load), deadline);
          if (result.status.ok()) result.status = rebalancer->EndStep(*t, layer, step, load, deadline);
        }
      } catch (Silent) {
        result.status = absl::AbortedError("went silent");
      }
      result.version = rebalancer->version();
      result.events = rebalancer->events();
      for (int64_t s = 0; s < layer.placement().num_slots(); ++s) result.final_slots.push_back(layer.placement().slot_expert(s));
    });
  }
  for (auto& th : threads) th.join();
  bool all_ok = true;
  for (const RankResult& r : run.ranks) all_ok = all_ok && r.status.ok();
  // The reference, step by step.
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<int64_t> slices;
    for (int r = 0; r < world; ++r) slices.push_back(ep::TokenSlice(tokens, world, r).second);
    Tensor expected = *ep::ReferenceForward(spec, all, SkewedTokens(spec, all, tokens, 100 + step), {}, slices);
    if (!all_ok) continue;
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < expected.size(); ++i) {
      scale = std::max(scale, std::fabs(double{expected.values[i]}));
      worst = std::max(worst, std::fabs(double{expected.values[i]} - run.outputs[step].values[i]));
    }
    EXPECT_LE(worst, 1e-4 * scale) << "step " << step;
  }
  return run;
}

TEST(LiveRebalancer, OutputsMatchTheReferenceBeforeDuringAndAfterTheSwitch) {
  RebalanceOptions options;
  options.at_step = 2;
  options.chunk_bytes = 2 * 3 * 24 * 32 * 4;  // two experts per chunk: the move spans steps
  Steps run = RunSteps(4, 8, options);
  for (const RankResult& r : run.ranks) {
    ASSERT_TRUE(r.status.ok()) << r.status;
    EXPECT_EQ(r.version, 2);
    ASSERT_EQ(r.events.size(), 1u);
    EXPECT_EQ(r.final_slots, run.ranks[0].final_slots);
  }
  const RebalanceEvent& e = run.ranks[0].events[0];
  EXPECT_EQ(e.decided_step, 2);
  EXPECT_GT(e.experts_moved, 0);
  EXPECT_GT(e.chunks, 1);
  EXPECT_EQ(e.live_step, 2 + e.chunks);  // one chunk after each step, then the switch
  EXPECT_EQ(e.bytes, e.experts_moved * 3 * 24 * 32 * 4);
  EXPECT_LT(e.imbalance_after, e.imbalance_before);
}

TEST(LiveRebalancer, ThresholdTriggersOnceAndRespectsTheInterval) {
  RebalanceOptions options;
  options.threshold = 1.05;
  options.window = 2;
  options.interval = 100;
  Steps run = RunSteps(4, 8, options);
  for (const RankResult& r : run.ranks) ASSERT_TRUE(r.status.ok()) << r.status;
  ASSERT_EQ(run.ranks[0].events.size(), 1u);
  EXPECT_EQ(run.ranks[0].events[0].decided_step, 2);  // as soon as the window is full
  EXPECT_THAT(run.ranks[0].events[0].reason, ::testing::HasSubstr("window imbalance"));
}

TEST(LiveRebalancer, SilentRankMidMigrationFailsTheJobAndNamesIt) {
  RebalanceOptions options;
  options.at_step = 1;
  Steps run = RunSteps(4, 4, options, /*silent_rank=*/2);
  for (int r = 0; r < 4; ++r) {
    if (r == 2) continue;
    EXPECT_THAT(std::string(run.ranks[r].status.message()),
                ::testing::ContainsRegex("migrating experts to placement version 2 \\(chunk 1 of 1\\): .*rank\\(s\\) 2"))
        << "rank " << r;
    EXPECT_EQ(run.ranks[r].version, 1) << "rank " << r << " must still serve the old placement";
  }
}

TEST(LiveRebalancer, SlotsThatDoNotDivideAreRefused) {
  Steps run = RunSteps(3, 1, RebalanceOptions{});  // 20 slots over 3 ranks
  EXPECT_THAT(std::string(run.ranks[0].status.message()),
              ::testing::HasSubstr("16 experts + 4 replicas = 20 slots over 3 ranks"));
}

}  // namespace
}  // namespace moex::balance
