#include "moex/cluster/spec_validation.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/job_spec.h"
#include "moex/core/format.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"

namespace moex::cluster {
namespace {

using ::testing::HasSubstr;

moex::v1::JobSpec Good() {
  moex::v1::JobSpec spec;
  spec.set_name("ok-job_1.2");
  spec.set_world_size(2);
  spec.set_model("tiny");
  spec.set_steps(3);
  spec.set_tokens_per_rank(16);
  return spec;
}

std::string ErrorOf(moex::v1::JobSpec spec) {
  absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 8});
  return status.ok() ? "" : std::string(status.message());
}

TEST(SpecValidationTest, GoodSpecGetsDefaults) {
  moex::v1::JobSpec spec = Good();
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.transport(), "mpi");
  EXPECT_EQ(spec.dispatch(), "auto");
  EXPECT_EQ(RunConfigFromSpec(spec).dispatch, "auto");
}

// A client that leaves tokens_per_rank out gets `moex run`'s default, not a
// job of no tokens that "succeeds" at 0 tokens/s (issue #20).
TEST(SpecValidationTest, UnsetTokensPerRankIsTheDefault) {
  moex::v1::JobSpec spec = Good();
  spec.clear_tokens_per_rank();
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.tokens_per_rank(), job::RunConfig{}.tokens_per_rank);
  EXPECT_GT(RunConfigFromSpec(spec).tokens_per_rank, 0);
}

// What the ranks run is what the controller checked: one conversion, with
// RunConfig's defaults where the spec leaves them open.
TEST(SpecValidationTest, TheRanksRunWhatWasChecked) {
  moex::v1::JobSpec spec = Good();
  spec.set_routing_skew(1.5);
  spec.set_seed(7);
  spec.mutable_rebalance()->set_policy("moex");
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.rebalance().policy(), "refined");  // the old name, kept as the current one
  EXPECT_EQ(spec.rebalance().interval(), 10);
  job::RunConfig config = RunConfigFromSpec(spec);
  EXPECT_EQ(config.model, "tiny");
  EXPECT_EQ(config.steps, 3);
  EXPECT_EQ(config.tokens_per_rank, 16);
  EXPECT_EQ(config.routing_skew, 1.5);
  EXPECT_EQ(config.seed, 7u);
  EXPECT_EQ(config.transport, "mpi");
  EXPECT_EQ(config.timeout_seconds, 60);  // 0 in the spec: the default
  EXPECT_EQ(config.rebalance.policy, "refined");
  EXPECT_TRUE(config.ValidateLayer(spec.world_size(), job::FieldNames::kJobSpec).ok());
}

TEST(SpecValidationTest, EveryBadFieldIsNamed) {
  auto with = [](auto change) {
    moex::v1::JobSpec spec = Good();
    change(spec);
    return ErrorOf(spec);
  };
  EXPECT_THAT(with([](auto& s) { s.set_name("rm -rf /"); }), HasSubstr("spec.name"));
  EXPECT_THAT(with([](auto& s) { s.set_name(""); }), HasSubstr("spec.name"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(9); }), HasSubstr("spec.world_size is 9; this controller allows 1 to 8"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(-1); }), HasSubstr("spec.world_size"));
  EXPECT_THAT(with([](auto& s) { s.set_steps(0); }), HasSubstr("spec.steps"));
  EXPECT_THAT(with([](auto& s) { s.set_tokens_per_rank(1 << 30); }), HasSubstr("spec.tokens_per_rank"));
  EXPECT_THAT(with([](auto& s) { s.set_transport("tcp"); }), HasSubstr("spec.transport is 'tcp'"));
  EXPECT_THAT(with([](auto& s) { s.set_dispatch("fast"); }),
              HasSubstr("spec.dispatch is 'fast'; known: auto, flat, hierarchical"));
  EXPECT_THAT(with([](auto& s) { s.set_transport("nccl"); }),
              HasSubstr("spec.transport is 'nccl'; known for device cpu: mpi, ucx"));
  EXPECT_THAT(with([](auto& s) { s.set_device("tpu"); }), HasSubstr("spec.device is 'tpu'; known: cpu, cuda"));
  EXPECT_THAT(with([](auto& s) { s.set_device("cuda"); s.set_transport("ucx"); }),
              HasSubstr("spec.transport is 'ucx'; known for device cuda: nccl"));
  EXPECT_THAT(with([](auto& s) { s.set_ranks_per_host(-1); }), HasSubstr("spec.ranks_per_host must be in [0, 4096]"));
  EXPECT_THAT(with([](auto& s) { s.add_hosts("h0"); s.add_hosts("h0;reboot"); }),
              HasSubstr("spec.hosts[1] 'h0;reboot' is not a host name"));
  EXPECT_THAT(with([](auto& s) { s.add_hosts("h0"); s.add_hosts("h0"); }), HasSubstr("spec.hosts[1] repeats 'h0'"));
  EXPECT_THAT(with([](auto& s) { s.set_exchange_timeout_seconds(5000); }), HasSubstr("spec.exchange_timeout_seconds"));
  EXPECT_THAT(with([](auto& s) { s.mutable_rebalance()->set_policy("random"); }),
              HasSubstr("spec.rebalance.policy is 'random'; known: refined, eplb"));
  EXPECT_THAT(with([](auto& s) { s.set_routing_skew(1e9); }), HasSubstr("spec.routing_skew"));
  EXPECT_THAT(with([](auto& s) { s.set_model("/etc/passwd"); }),
              HasSubstr("spec.model '/etc/passwd' is outside the controller's data roots"));
  EXPECT_THAT(with([](auto& s) { s.set_model("llama-3.1-8b"); }), HasSubstr("has no MoE layer"));
  EXPECT_THAT(with([](auto& s) { s.set_model("mini-dsv3"); s.set_layer(0); }), HasSubstr("spec.layer"));
  EXPECT_THAT(with([](auto& s) { s.set_world_size(8); s.set_model("tiny-dsv3"); s.set_redundant_experts(-1); }),
              HasSubstr("spec.redundant_experts"));
}

TEST(SpecValidationTest, WeightsMustBeThisLayersCheckpoint) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("moex-spec-weights-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  absl::StatusOr<model::ModelArch> tiny = model::LoadModel("tiny");
  ASSERT_TRUE(tiny.ok());
  absl::StatusOr<ep::MoeLayerSpec> layer = ep::MoeLayerSpec::FromArch(*tiny, std::nullopt);
  ASSERT_TRUE(layer.ok());
  std::vector<int64_t> all;
  for (int64_t e = 0; e < layer->num_experts; ++e) all.push_back(e);
  const std::string good = (dir / "tiny.safetensors").string();
  ASSERT_TRUE(ep::SaveMoeWeights(*layer, *ep::LoadMoeWeights(*layer, nullptr, 1, all), good, model::StorageDtype::kBF16).ok());
  const std::string junk = (dir / "junk.safetensors").string();
  std::ofstream(junk) << "not a checkpoint";

  // The controller reads files for clients only under its data roots.
  const std::vector<std::string> roots = {std::filesystem::canonical(dir).string()};
  auto error_of = [&](moex::v1::JobSpec spec) {
    absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 8, .data_roots = roots});
    return status.ok() ? "" : std::string(status.message());
  };
  moex::v1::JobSpec spec = Good();
  spec.set_weights(good);
  EXPECT_EQ(error_of(spec), "");
  EXPECT_THAT(ErrorOf(spec), HasSubstr("is outside the controller's data roots (none"));
  spec.set_weights(junk);
  EXPECT_THAT(error_of(spec), HasSubstr("spec.weights '" + junk + "' is not a safetensors file"));
  spec.set_weights((dir / "missing.safetensors").string());
  EXPECT_THAT(error_of(spec), HasSubstr("missing.safetensors' does not exist"));
  spec.set_weights(std::string("a\0b", 3));
  EXPECT_THAT(error_of(spec), HasSubstr("spec.weights must be a path"));
  // Ranks on the controller's host: the experts, in the checkpoint's dtype
  // (bf16 here), must fit in its memory.
  spec.set_weights(good);
  const int64_t experts_bf16 = layer->num_experts * 3 * layer->expert_width * layer->hidden * 2;
  auto with_memory = [&](int64_t available) {
    moex::v1::JobSpec copy = spec;
    absl::Status status = ValidateAndNormalise(
        &copy, SpecLimits{.max_world_size = 8, .data_roots = roots, .local_memory_bytes = available});
    return status.ok() ? "" : std::string(status.message());
  };
  EXPECT_EQ(with_memory(experts_bf16), "");
  EXPECT_THAT(with_memory(experts_bf16 - 1),
              HasSubstr("expert slots need " + FormatBytes(static_cast<double>(experts_bf16)) +
                        " held in bf16; the 2 ranks run on this controller's host, which has " +
                        FormatBytes(static_cast<double>(experts_bf16 - 1)) + " available (MemAvailable)"));
  // A checkpoint of another model: no router of this layer's shape.
  spec.set_model("mini-dsv3");
  EXPECT_THAT(error_of(spec), HasSubstr("not this model's layer"));
  std::filesystem::remove_all(dir);
}

TEST(SpecValidationTest, WeightDtypeIsNamedAndDefaulted) {
  moex::v1::JobSpec spec = Good();
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.weight_dtype(), "f32");
  EXPECT_EQ(RunConfigFromSpec(spec).weight_dtype, "f32");
  EXPECT_TRUE(RunConfigFromSpec(spec).map_weights);
  spec.set_weight_dtype("fp8");
  spec.set_copy_weights(true);
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(RunConfigFromSpec(spec).weight_dtype, "fp8");
  EXPECT_FALSE(RunConfigFromSpec(spec).map_weights);
  spec.set_weight_dtype("int4");
  absl::Status bad = ValidateAndNormalise(&spec, SpecLimits{});
  EXPECT_THAT(std::string(bad.message()), HasSubstr("spec.weight_dtype is 'int4'; known: f32, bf16, f16, fp8, mxfp4"));
}

TEST(SpecValidationTest, WorldLargerThanTheExpertSlots) {
  moex::v1::JobSpec spec = Good();
  spec.set_world_size(16);
  absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 64});
  EXPECT_THAT(std::string(status.message()), HasSubstr("only 8 expert slots"));
}

TEST(SpecValidationTest, ElasticRecoveryFields) {
  auto with = [](auto change) {
    moex::v1::JobSpec spec = Good();
    change(spec);
    return ErrorOf(spec);
  };
  EXPECT_EQ(with([](auto& s) { s.set_max_restarts(3); s.set_allow_shrink(true); }), "");
  EXPECT_THAT(with([](auto& s) { s.set_max_restarts(11); }), HasSubstr("spec.max_restarts must be in [0, 10]"));
  EXPECT_THAT(with([](auto& s) { s.set_max_restarts(-1); }), HasSubstr("spec.max_restarts"));
  EXPECT_THAT(with([](auto& s) { s.set_allow_shrink(true); }), HasSubstr("spec.allow_shrink needs max_restarts"));
}

TEST(SpecValidationTest, BenchJobsGetTheirPointsAsSteps) {
  moex::v1::JobSpec spec = Good();
  spec.set_steps(0);
  spec.set_model("");
  spec.mutable_bench()->add_tokens_per_rank(64);
  spec.mutable_bench()->add_tokens_per_rank(128);
  spec.mutable_bench()->add_skew(0);
  spec.mutable_bench()->add_skew(1.2);
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{}).ok());
  EXPECT_EQ(spec.steps(), 4);  // 2 token counts x 2 skews
  EXPECT_EQ(spec.bench().hidden_size(), 1);  // the defaults are written back
  EXPECT_EQ(spec.bench().reps(), 10);
  auto with = [](auto change) {
    moex::v1::JobSpec s = Good();
    s.mutable_bench();
    change(s);
    return ErrorOf(s);
  };
  EXPECT_THAT(with([](auto& s) { s.mutable_bench()->add_experts(1); }), HasSubstr("spec.bench"));
  EXPECT_THAT(with([](auto& s) { s.mutable_bench()->add_skew(std::nan("")); }), HasSubstr("spec.bench.skew"));
  EXPECT_THAT(with([](auto& s) { s.mutable_bench()->set_reps(-1); }), HasSubstr("spec.bench.reps"));
  EXPECT_THAT(with([](auto& s) { s.set_max_restarts(1); }), HasSubstr("not bench jobs"));
  EXPECT_THAT(with([](auto& s) {
                for (int i = 0; i < 20; ++i) s.mutable_bench()->add_tokens_per_rank(16 + i);
                for (int i = 0; i < 20; ++i) s.mutable_bench()->add_hidden(16 + i);
              }),
              HasSubstr("at most 256 per job"));
}

}  // namespace
}  // namespace moex::cluster
