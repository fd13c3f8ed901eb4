#include "moex/job/run_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::job {
namespace {

using ::testing::HasSubstr;

std::string ErrorOf(const RunConfig& config, FieldNames names = FieldNames::kFlags) {
  return std::string(config.Validate(names).message());
}

TEST(RunConfigTest, DefaultsAreValid) {
  RunConfig config;
  EXPECT_TRUE(config.Validate().ok());
  absl::StatusOr<model::MoeLayerSpec> layer = config.ValidateLayer(4);
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ(layer->model_type, "deepseek_v3");
}

TEST(RunConfigTest, EachFrontEndNamesTheFieldItsOwnWay) {
  RunConfig config;
  config.steps = 0;
  EXPECT_THAT(ErrorOf(config), HasSubstr("--steps is 0; allowed 1 to 1000000"));
  EXPECT_THAT(ErrorOf(config, FieldNames::kJobSpec), HasSubstr("spec.steps is 0; allowed 1 to 1000000"));
}

TEST(RunConfigTest, BoundsAndPairings) {
  auto with = [](auto change) {
    RunConfig config;
    change(config);
    return ErrorOf(config);
  };
  EXPECT_THAT(with([](RunConfig& c) { c.tokens_per_rank = -1; }), HasSubstr("--tokens-per-rank"));
  EXPECT_THAT(with([](RunConfig& c) { c.routing_skew = 1e9; }), HasSubstr("--routing-skew"));
  EXPECT_THAT(with([](RunConfig& c) { c.routing_skew = std::nan(""); }), HasSubstr("--routing-skew must be a finite"));
  EXPECT_THAT(with([](RunConfig& c) { c.timeout_seconds = 0; }), HasSubstr("--timeout"));
  EXPECT_THAT(with([](RunConfig& c) { c.transport = "tcp"; }), HasSubstr("--transport is 'tcp'; known: mpi, ucx, nccl"));
  EXPECT_THAT(with([](RunConfig& c) { c.device = "tpu"; }), HasSubstr("--device 'tpu' is not one of cpu, cuda"));
  EXPECT_THAT(with([](RunConfig& c) { c.transport = "nccl"; }),
              HasSubstr("--transport nccl carries device buffers: add --device cuda"));
  EXPECT_THAT(with([](RunConfig& c) { c.device = "cuda"; }),
              HasSubstr("--device cuda moves tokens over NCCL: add --transport nccl"));
  EXPECT_THAT(with([](RunConfig& c) { c.device = "cuda"; c.transport = "nccl"; c.rebalance.at_step = 2; }),
              HasSubstr("live rebalancing is not on the GPU path yet"));
  EXPECT_THAT(with([](RunConfig& c) { c.rebalance.policy = "random"; }), HasSubstr("--rebalance-policy is 'random'"));
  EXPECT_THAT(with([](RunConfig& c) { c.rebalance.threshold = 0.5; }), HasSubstr("--rebalance-threshold must be 0"));
  EXPECT_THAT(with([](RunConfig& c) { c.rebalance.window = 0; }), HasSubstr("--rebalance-window"));
  EXPECT_THAT(with([](RunConfig& c) { c.rebalance.migration_chunk_mb = 0; }), HasSubstr("--migration-chunk-mb"));
  EXPECT_THAT(with([](RunConfig& c) { c.model = std::string("a\0b", 3); }), HasSubstr("--model must name"));
}

TEST(RunConfigTest, TheLayerAgainstTheWorld) {
  RunConfig config;
  config.model = "tiny";  // 8 experts
  EXPECT_TRUE(config.ValidateLayer(8).ok());
  EXPECT_THAT(std::string(config.ValidateLayer(9).status().message()),
              HasSubstr("cannot fill 9 ranks: there are only 8 expert slots"));
  config.redundant_experts = 1;
  EXPECT_TRUE(config.ValidateLayer(9).ok());
  config.redundant_experts = 0;
  config.rebalance.threshold = 1.2;
  EXPECT_THAT(std::string(config.ValidateLayer(3).status().message()),
              HasSubstr("8 experts + 0 replicas = 8 slots over 3 ranks"));
  config.rebalance.threshold = 0;
  config.model = "mini-dsv3";
  config.layer = 0;
  EXPECT_THAT(std::string(config.ValidateLayer(2, FieldNames::kJobSpec).status().message()),
              HasSubstr("spec.layer mini-dsv3: layer 0 is a dense layer"));
  config.layer.reset();
  config.model = "/nonexistent/config.json";
  EXPECT_THAT(std::string(config.ValidateLayer(2, FieldNames::kJobSpec).status().message()),
              HasSubstr("spec.model cannot be read"));
}

TEST(RunConfigTest, CheckBoundFollowsTheDevice) {
  RunConfig config;
  EXPECT_EQ(CheckBound(config), 1e-4);
  config.device = "cuda";
  EXPECT_EQ(CheckBound(config), 3e-2);
}

}  // namespace
}  // namespace moex::job
