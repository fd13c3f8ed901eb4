// The dtype `moex plan` uses: the config's quantization_config, else its
// torch_dtype (or dtype), else bf16; --dtype over all of them.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/model_loader.h"
#include "moex/model/presets.h"
#include "moex/plan/weight_dtype.h"

namespace moex::plan {
namespace {

using ::testing::HasSubstr;

// A preset's config.json with `extra` fields merged in, read as a user's file.
absl::StatusOr<model::ModelArch> ArchWith(std::string_view preset, const nlohmann::json& extra) {
  std::optional<model::Preset> found = model::FindPreset(preset);
  EXPECT_TRUE(found.has_value()) << preset;
  nlohmann::json config = nlohmann::json::parse(found->config_json);
  config.update(extra);
  return model::ParseModelConfig(config, "config.json");
}

model::ModelArch MustArchWith(std::string_view preset, const nlohmann::json& extra) {
  absl::StatusOr<model::ModelArch> arch = ArchWith(preset, extra);
  EXPECT_TRUE(arch.ok()) << arch.status();
  return arch.ok() ? *arch : model::ModelArch{};
}

const nlohmann::json kDeepseekFp8 = {
    {"torch_dtype", "bfloat16"},
    {"quantization_config",
     {{"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {128, 128}}, {"activation_scheme", "dynamic"}}}};

TEST(StoredDtypeTest, ReadFromEveryConfig) {
  model::ModelArch arch = MustArchWith("deepseek-v3", kDeepseekFp8);
  EXPECT_TRUE(arch.stored.quantized);
  EXPECT_EQ(arch.stored.quant_method, "fp8");
  EXPECT_EQ(arch.stored.quant_format, "e4m3");
  EXPECT_EQ(arch.stored.weight_block_size, (std::vector<int64_t>{128, 128}));
  EXPECT_EQ(arch.stored.dtype, "bfloat16");
  EXPECT_EQ(arch.stored.dtype_field, "torch_dtype");
  // Presets name no dtype.
  absl::StatusOr<model::ModelArch> preset = model::LoadModel("deepseek-v3");
  ASSERT_TRUE(preset.ok());
  EXPECT_FALSE(preset->stored.quantized);
  EXPECT_TRUE(preset->stored.dtype_field.empty());
}

TEST(StoredDtypeTest, AFieldOfTheWrongTypeIsAnErrorNamingIt) {
  absl::StatusOr<model::ModelArch> arch = ArchWith("deepseek-v3", {{"quantization_config", "fp8"}});
  ASSERT_FALSE(arch.ok());
  EXPECT_THAT(std::string(arch.status().message()), HasSubstr("field 'quantization_config' must be an object"));
  arch = ArchWith("mixtral-8x7b", {{"torch_dtype", 16}});
  ASSERT_FALSE(arch.ok());
  EXPECT_THAT(std::string(arch.status().message()), HasSubstr("field 'torch_dtype' must be a string"));
}

TEST(DtypeFromConfigTest, Fp8BlockQuantizationIsFp8) {
  absl::StatusOr<DtypeChoice> choice = DtypeFromConfig(MustArchWith("deepseek-v3", kDeepseekFp8));
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->dtype, WeightDtype::kFp8);
  EXPECT_EQ(choice->source, "quantization_config");
  EXPECT_EQ(choice->detail, "quant_method fp8, e4m3, 128x128 blocks");
  EXPECT_TRUE(choice->notes.empty());
}

TEST(DtypeFromConfigTest, Fp8WithAnotherBlockSizeSaysThePlanAssumes128) {
  nlohmann::json config = kDeepseekFp8;
  config["quantization_config"]["weight_block_size"] = {64, 64};
  absl::StatusOr<DtypeChoice> choice = DtypeFromConfig(MustArchWith("kimi-k2", config));
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->dtype, WeightDtype::kFp8);
  ASSERT_EQ(choice->notes.size(), 1u);
  EXPECT_THAT(choice->notes[0], HasSubstr("[64, 64]; the plan sizes fp8 scales per 128x128 block"));
}

TEST(DtypeFromConfigTest, Mxfp4IsFp4) {
  absl::StatusOr<DtypeChoice> choice = DtypeFromConfig(MustArchWith(
      "gpt-oss-120b", {{"torch_dtype", "bfloat16"},
                       {"quantization_config",
                        {{"quant_method", "mxfp4"},
                         {"modules_to_not_convert", {"model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                     "model.embed_tokens", "lm_head"}}}}}));
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->dtype, WeightDtype::kFp4);
  EXPECT_EQ(choice->source, "quantization_config");
  EXPECT_EQ(choice->detail, "quant_method mxfp4");
}

TEST(DtypeFromConfigTest, TorchDtypeOrDtype) {
  absl::StatusOr<DtypeChoice> bf16 = DtypeFromConfig(MustArchWith("qwen3-30b-a3b", {{"torch_dtype", "bfloat16"}}));
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  EXPECT_EQ(bf16->dtype, WeightDtype::kBf16);
  EXPECT_EQ(bf16->source, "torch_dtype");
  EXPECT_EQ(bf16->detail, "bfloat16");
  // Newer transformers write "dtype".
  absl::StatusOr<DtypeChoice> fp16 = DtypeFromConfig(MustArchWith("mixtral-8x7b", {{"dtype", "float16"}}));
  ASSERT_TRUE(fp16.ok()) << fp16.status();
  EXPECT_EQ(fp16->dtype, WeightDtype::kFp16);
  EXPECT_EQ(fp16->source, "dtype");
  EXPECT_EQ(SchemeFor(WeightDtype::kFp16).bytes_per_param, SchemeFor(WeightDtype::kBf16).bytes_per_param);
  absl::StatusOr<DtypeChoice> fp32 = DtypeFromConfig(MustArchWith("mixtral-8x7b", {{"torch_dtype", "float32"}}));
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(fp32->dtype, WeightDtype::kFp32);
}

TEST(DtypeFromConfigTest, NothingDeclaredIsTheBf16Default) {
  absl::StatusOr<model::ModelArch> preset = model::LoadModel("deepseek-v3");
  ASSERT_TRUE(preset.ok());
  absl::StatusOr<DtypeChoice> choice = DtypeFromConfig(*preset);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->dtype, WeightDtype::kBf16);
  EXPECT_EQ(choice->source, "default");
}

TEST(DtypeFromConfigTest, AnUnknownQuantMethodNamesTheFieldTheValueAndTheOverride) {
  absl::StatusOr<DtypeChoice> choice =
      DtypeFromConfig(MustArchWith("kimi-k2", {{"quantization_config", {{"quant_method", "compressed-tensors"}}}}));
  ASSERT_FALSE(choice.ok());
  const std::string message(choice.status().message());
  EXPECT_THAT(message, HasSubstr("config.json: field 'quantization_config.quant_method' is 'compressed-tensors'"));
  EXPECT_THAT(message, HasSubstr("--dtype fp32|bf16|fp16|fp8|fp4 overrides it"));
  absl::StatusOr<DtypeChoice> torch = DtypeFromConfig(MustArchWith("mixtral-8x7b", {{"torch_dtype", "int8"}}));
  ASSERT_FALSE(torch.ok());
  EXPECT_THAT(std::string(torch.status().message()), HasSubstr("field 'torch_dtype' is 'int8'"));
  absl::StatusOr<DtypeChoice> no_method =
      DtypeFromConfig(MustArchWith("kimi-k2", {{"quantization_config", nlohmann::json::object()}}));
  ASSERT_FALSE(no_method.ok());
  EXPECT_THAT(std::string(no_method.status().message()), HasSubstr("'quantization_config.quant_method' is missing"));
}

TEST(ChooseDtypeTest, TheFlagOverridesTheConfigAndSaysWhatItReplaced) {
  model::ModelArch arch = MustArchWith("deepseek-v3", kDeepseekFp8);
  absl::StatusOr<DtypeChoice> choice = ChooseDtype("bf16", arch);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->dtype, WeightDtype::kBf16);
  EXPECT_EQ(choice->source, "--dtype");
  ASSERT_EQ(choice->notes.size(), 1u);
  EXPECT_THAT(choice->notes[0], HasSubstr("the config declares fp8 (quantization_config"));
  // The same dtype as the config's: nothing to say.
  EXPECT_TRUE(ChooseDtype("fp8", arch)->notes.empty());
  // An unknown quant_method is no error once --dtype is given.
  model::ModelArch unknown = MustArchWith("kimi-k2", {{"quantization_config", {{"quant_method", "awq"}}}});
  absl::StatusOr<DtypeChoice> overridden = ChooseDtype("fp4", unknown);
  ASSERT_TRUE(overridden.ok()) << overridden.status();
  EXPECT_EQ(overridden->dtype, WeightDtype::kFp4);
  // No flag: the config decides; a bad flag is an error.
  EXPECT_EQ(ChooseDtype("", arch)->dtype, WeightDtype::kFp8);
  EXPECT_FALSE(ChooseDtype("int3", arch).ok());
}

}  // namespace
}  // namespace moex::plan
