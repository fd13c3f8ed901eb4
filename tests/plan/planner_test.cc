#include "moex/plan/planner.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/format.h"
#include "moex/model/model_loader.h"
#include "moex/model/presets.h"
#include "moex/plan/plan_report.h"

namespace moex::plan {
namespace {

using ::testing::HasSubstr;
using model::Part;

Plan PlanFor(std::string_view name, PlanOptions options = {}) {
  absl::StatusOr<model::ModelArch> arch = model::LoadModel(name);
  EXPECT_TRUE(arch.ok()) << arch.status();
  absl::StatusOr<Plan> plan = MakePlan(*arch, options);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return *plan;
}

TEST(PlannerTest, Bf16IsTwoBytesPerParameter) {
  Plan plan = PlanFor("mixtral-8x7b");
  EXPECT_DOUBLE_EQ(plan.weight_bytes, 2.0 * 46702792704.0);
}

TEST(PlannerTest, FlopsOfADenseModel) {
  // Linear: 2 FLOPs per weight except the embedding lookup and the norms.
  Plan plan = PlanFor("llama-3.1-8b", {.context = 1});
  const model::ParamCount& p = plan.params;
  EXPECT_DOUBLE_EQ(plan.linear_flops_per_token,
                   2.0 * static_cast<double>(p.total - p.part(Part::kEmbedding).total -
                                             p.part(Part::kNorms).total));
  // Attention at context 1: 32 layers * 2 * 32 heads * (128 + 128) * 1.
  EXPECT_DOUBLE_EQ(plan.attention_flops_per_token, 32.0 * 2 * 32 * 256);
}

TEST(PlannerTest, AttentionFlopsGrowWithContextAndStopAtTheWindow) {
  // Mixtral has no window: 32 layers * 2 * 32 heads * 256 * 4096.
  EXPECT_DOUBLE_EQ(PlanFor("mixtral-8x7b", {.context = 4096}).attention_flops_per_token,
                   32.0 * 2 * 32 * 256 * 4096);
  // Mistral-7B slides over 4096 tokens: context 32768 costs what 4096 does.
  EXPECT_DOUBLE_EQ(PlanFor("mistral-7b", {.context = 32768}).attention_flops_per_token,
                   PlanFor("mistral-7b", {.context = 4096}).attention_flops_per_token);
}

TEST(PlannerTest, DeepseekV3FlopsAreTwiceTheActiveWeightsPlusAttention) {
  Plan plan = PlanFor("deepseek-v3", {.context = 4096});
  // 2 x (37.55B - 0.93B embedding) = 73.25 GFLOP linear; attention
  // 61 layers * 2 * 128 heads * (192 + 128) * 4096 = 20.47 GFLOP.
  EXPECT_NEAR(plan.linear_flops_per_token, 73.25e9, 0.01e9);
  EXPECT_DOUBLE_EQ(plan.attention_flops_per_token, 61.0 * 2 * 128 * 320 * 4096);
}

TEST(PlannerTest, Fp8QuantisesLinearLayersAndKeepsEmbeddingsInBf16) {
  Plan plan = PlanFor("deepseek-v3", {.dtype = WeightDtype::kFp8});
  const auto& bytes = plan.part_bytes;
  EXPECT_DOUBLE_EQ(bytes[static_cast<int>(Part::kEmbedding)],
                   2.0 * static_cast<double>(plan.params.part(Part::kEmbedding).total));
  double experts = static_cast<double>(plan.params.part(Part::kRoutedExperts).total);
  EXPECT_DOUBLE_EQ(bytes[static_cast<int>(Part::kRoutedExperts)], experts * (1.0 + 4.0 / 16384));
  // Nearly everything is an expert: fp8 is just over half of bf16.
  double bf16 = PlanFor("deepseek-v3").weight_bytes;
  EXPECT_GT(plan.weight_bytes, 0.5 * bf16);
  EXPECT_LT(plan.weight_bytes, 0.51 * bf16);
}

TEST(PlannerTest, Fp4GptOss120bFitsOneEightyGigabyteGpu) {
  // OpenAI: the MXFP4 checkpoint runs on a single 80 GB GPU.
  Plan plan = PlanFor("gpt-oss-120b", {.dtype = WeightDtype::kFp4, .gpus = 1});
  ASSERT_TRUE(plan.deployment.has_value());
  EXPECT_TRUE(plan.deployment->fits);
  EXPECT_NEAR(plan.weight_bytes / 1e9, 65.2, 0.5);  // the checkpoint's size in GB
  EXPECT_EQ(plan.deployment->fewest_gpus, 1);
}

TEST(PlannerTest, ExpertsPartitionAndTheRestReplicates) {
  Plan plan = PlanFor("deepseek-v3", {.dtype = WeightDtype::kFp8, .gpus = 16});
  const Deployment& d = *plan.deployment;
  EXPECT_EQ(d.max_experts_per_gpu, 16);
  EXPECT_TRUE(d.experts_divide_evenly);
  EXPECT_EQ(d.nodes, 2);
  double routed = plan.part_bytes[static_cast<int>(Part::kRoutedExperts)];
  EXPECT_DOUBLE_EQ(d.replicated_bytes, plan.weight_bytes - routed);
  EXPECT_NEAR(d.expert_bytes_per_gpu, routed / 16, 1.0);
  EXPECT_TRUE(d.fits);
}

TEST(PlannerTest, UnevenPartitionIsReported) {
  Plan plan = PlanFor("deepseek-v3", {.gpus = 24});
  EXPECT_FALSE(plan.deployment->experts_divide_evenly);
  EXPECT_EQ(plan.deployment->max_experts_per_gpu, 11);  // ceil(256 / 24)
  EXPECT_EQ(plan.deployment->min_experts_per_gpu, 10);
}

// For every preset and dtype the fewest GPU count holds the weights and one
// fewer does not.
TEST(PlannerTest, FewestGpusIsTight) {
  for (const model::Preset& preset : model::AllPresets()) {
    for (WeightDtype dtype : {WeightDtype::kBf16, WeightDtype::kFp8, WeightDtype::kFp4}) {
      Plan plan = PlanFor(preset.name, {.dtype = dtype, .gpus = 8, .gpu_mem_gib = 80});
      const Deployment& d = *plan.deployment;
      if (!d.fewest_gpus) {
        EXPECT_FALSE(d.why_no_fit.empty()) << preset.name;
        continue;
      }
      int64_t n = *d.fewest_gpus;
      auto weights_on = [&](int64_t gpus) {
        return PlanFor(preset.name, {.dtype = dtype, .gpus = gpus}).deployment->weight_bytes_per_gpu;
      };
      EXPECT_LE(weights_on(n), d.gpu_mem_bytes) << preset.name;
      if (n > 1) {
        EXPECT_GT(weights_on(n - 1), d.gpu_mem_bytes) << preset.name;
      }
      EXPECT_EQ(*d.fewest_gpus_whole_nodes % 8, 0);
      EXPECT_GE(*d.fewest_gpus_whole_nodes, n);
    }
  }
}

TEST(PlannerTest, DenseWeightsLargerThanAGpuCannotBeSplitByExperts) {
  Plan plan = PlanFor("llama-3.1-8b", {.gpus = 4, .gpu_mem_gib = 8});
  EXPECT_FALSE(plan.deployment->fewest_gpus.has_value());
  EXPECT_THAT(plan.deployment->why_no_fit, HasSubstr("tensor or pipeline parallelism"));
}

TEST(PlannerTest, KvCacheOfMlaIsTheLatent) {
  // 61 layers * (512 + 64) elements * 2 bytes.
  EXPECT_DOUBLE_EQ(PlanFor("deepseek-v3").kv_cache_bytes_per_token, 61.0 * 576 * 2);
}

TEST(PlannerTest, OptionsAreValidated) {
  model::ModelArch arch = *model::LoadModel("tiny");
  EXPECT_THAT(std::string(MakePlan(arch, {.context = 0}).status().message()), HasSubstr("--context 0"));
  EXPECT_THAT(std::string(MakePlan(arch, {.gpus = 0}).status().message()), HasSubstr("--gpus 0"));
  EXPECT_THAT(std::string(MakePlan(arch, {.gpu_mem_gib = -1}).status().message()),
              HasSubstr("--gpu-mem-gib"));
  EXPECT_THAT(std::string(ParseWeightDtype("int3").status().message()), HasSubstr("'int3'"));
}

TEST(PlanReportTest, JsonHasTheDocumentedKeys) {
  nlohmann::json json = PlanToJson(PlanFor("qwen3-30b-a3b", {.gpus = 8}));
  for (const char* key :
       {"total_params", "active_params", "active_params_excl_embedding", "activation_ratio",
        "breakdown", "moe_layers", "dense_layers", "routed_experts_per_layer", "experts_per_token",
        "flops_per_token", "weight_bytes", "quantised_parts", "deployment", "mtp"}) {
    EXPECT_TRUE(json.contains(key)) << key;
  }
  for (const char* part : {"embedding", "lm_head", "attention", "dense_mlp", "routed_experts",
                           "shared_experts", "router", "norms", "other"}) {
    EXPECT_TRUE(json["breakdown"].contains(part)) << part;
    EXPECT_TRUE(json["breakdown"][part].contains("total"));
    EXPECT_TRUE(json["breakdown"][part].contains("active"));
  }
  for (const char* key : {"experts_per_gpu", "weight_bytes_per_gpu", "fits", "fewest_gpus",
                          "headroom_bytes_per_gpu"}) {
    EXPECT_TRUE(json["deployment"].contains(key)) << key;
  }
  EXPECT_EQ(json["moe_layers"], 48);
  EXPECT_EQ(json["experts_per_token"], 8);
  int64_t sum = 0;
  for (auto& [name, part] : json["breakdown"].items()) sum += part["total"].get<int64_t>();
  EXPECT_EQ(sum, json["total_params"].get<int64_t>());
}

TEST(PlanReportTest, TableNamesWhatWasNotCounted) {
  absl::StatusOr<model::ModelArch> arch =
      model::LoadModel(MOEX_TEST_FIXTURES "/configs/deepseek_v4_small.json");
  ASSERT_TRUE(arch.ok());
  std::string table = PlanToTable(*MakePlan(*arch, {}));
  EXPECT_THAT(table, HasSubstr("NOT COUNTED: compressed-attention"));
}

}  // namespace
}  // namespace moex::plan
