// Bad configs get an error that names the field; never a silently wrong
// number, never an overflow.
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/config_view.h"
#include "moex/model/model_loader.h"
#include "moex/model/param_count.h"
#include "moex/model/safetensors.h"

namespace moex::model {
namespace {

using ::testing::HasSubstr;

std::string ErrorOf(std::string_view text) {
  absl::StatusOr<nlohmann::json> json = ParseJsonText(text, "bad.json");
  if (!json.ok()) return std::string(json.status().message());
  absl::StatusOr<ModelArch> arch = ParseModelConfig(*json, "bad.json");
  return arch.ok() ? "" : std::string(arch.status().message());
}

constexpr char kMixtralHead[] = R"("model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8)";

TEST(HostileConfigTest, UnknownModelTypeListsWhatIsSupported) {
  std::string error = ErrorOf(R"({"model_type": "gpt2"})");
  EXPECT_THAT(error, HasSubstr("unknown model_type 'gpt2'"));
  EXPECT_THAT(error, HasSubstr("deepseek_v3"));
}

TEST(HostileConfigTest, MissingModelType) {
  EXPECT_EQ(ErrorOf("{}"), "bad.json: field 'model_type' is missing");
  EXPECT_THAT(ErrorOf(R"({"model_type": 3})"), HasSubstr("'model_type' must be a string"));
}

TEST(HostileConfigTest, MissingFieldIsNamed) {
  std::string config = std::string("{") + kMixtralHead + R"(, "num_local_experts": 8})";
  EXPECT_EQ(ErrorOf(config), "bad.json: field 'num_experts_per_tok' is missing");
}

TEST(HostileConfigTest, TopKAboveExpertCount) {
  std::string config = std::string("{") + kMixtralHead +
                       R"(, "num_local_experts": 8, "num_experts_per_tok": 9, "intermediate_size": 8})";
  EXPECT_THAT(ErrorOf(config), HasSubstr("'num_experts_per_tok' (9) exceeds num_local_experts (8)"));
}

TEST(HostileConfigTest, OutOfRangeValues) {
  EXPECT_THAT(ErrorOf(R"({"model_type": "llama", "vocab_size": -5})"),
              HasSubstr("'vocab_size' must be an integer in [1, 16777216], got -5"));
  EXPECT_THAT(ErrorOf(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 1e12})"),
              HasSubstr("'hidden_size' must be an integer in [1, 131072]"));
}

TEST(HostileConfigTest, HeadsThatDoNotDivide) {
  EXPECT_THAT(ErrorOf(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 64,
      "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 3,
      "intermediate_size": 8})"),
              HasSubstr("'num_key_value_heads' (3) must divide num_attention_heads (8)"));
  EXPECT_THAT(ErrorOf(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 65,
      "num_hidden_layers": 1, "num_attention_heads": 8, "intermediate_size": 8})"),
              HasSubstr("'head_dim' is missing and hidden_size (65)"));
}

TEST(HostileConfigTest, GroupLimitedRoutingMustDivide) {
  EXPECT_THAT(ErrorOf(R"({"model_type": "deepseek_v3", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 1, "num_attention_heads": 2, "kv_lora_rank": 4, "qk_nope_head_dim": 4,
      "qk_rope_head_dim": 2, "v_head_dim": 4, "intermediate_size": 8, "n_routed_experts": 10,
      "num_experts_per_tok": 2, "moe_intermediate_size": 4, "n_group": 4, "topk_group": 2})"),
              HasSubstr("'n_group' (4) must divide the routed expert count (10)"));
}

TEST(HostileConfigTest, NemotronPatternMustMatchLayers) {
  EXPECT_THAT(ErrorOf(R"({"model_type": "nemotron_h", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 3, "num_attention_heads": 2, "hybrid_override_pattern": "M*"})"),
              HasSubstr("has 2 characters but num_hidden_layers is 3"));
  EXPECT_THAT(ErrorOf(R"({"model_type": "nemotron_h", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 2, "num_attention_heads": 2, "hybrid_override_pattern": "*X"})"),
              HasSubstr("has 'X' at layer 1"));
}

TEST(HostileConfigTest, JambaDtRankMustBeAutoOrInteger) {
  std::string base = R"({"model_type": "jamba", "vocab_size": 10, "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1,
      "intermediate_size": 8, "attn_layer_period": 2, "attn_layer_offset": 1,
      "expert_layer_period": 2, "expert_layer_offset": 1, "mamba_d_state": 4, "mamba_d_conv": 4,
      "mamba_expand": 2, "mamba_dt_rank": )";
  EXPECT_THAT(ErrorOf(base + "\"big\"}"), HasSubstr("'mamba_dt_rank' must be an integer or \"auto\""));
  EXPECT_EQ(ErrorOf(base + "\"auto\"}"), "");
  EXPECT_THAT(ErrorOf(R"({"model_type": "jamba", "vocab_size": 10, "hidden_size": 32,
      "num_hidden_layers": 2, "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1,
      "intermediate_size": 8, "attn_layer_period": 2, "attn_layer_offset": 2})"),
              HasSubstr("'attn_layer_offset' (2) must be below attn_layer_period (2)"));
}

TEST(HostileConfigTest, NestedObjectsMustBeObjects) {
  EXPECT_THAT(ErrorOf(R"({"model_type": "llama4", "text_config": [1]})"),
              HasSubstr("'text_config' must be an object"));
  EXPECT_THAT(ErrorOf(R"({"model_type": "dbrx", "vocab_size": 10, "d_model": 8, "n_heads": 2,
      "n_layers": 1, "attn_config": {}, "ffn_config": {"moe_num_experts": 4, "moe_top_k": 2,
      "ffn_hidden_size": "x"}})"),
              HasSubstr("field 'ffn_config.ffn_hidden_size' must be an integer"));
}

// The bounds keep the largest config moex accepts inside int64.
TEST(HostileConfigTest, LargestAcceptedConfigDoesNotOverflow) {
  using L = FieldLimits;
  nlohmann::json config = {{"model_type", "mixtral"},
                           {"vocab_size", L::kVocab},
                           {"hidden_size", L::kHidden},
                           {"num_hidden_layers", L::kLayers},
                           {"num_attention_heads", 1024},
                           {"num_key_value_heads", 1024},
                           {"num_local_experts", L::kExperts},
                           {"num_experts_per_tok", L::kExperts},
                           {"intermediate_size", L::kWidth}};
  absl::StatusOr<ModelArch> arch = ParseModelConfig(config, "huge.json");
  ASSERT_TRUE(arch.ok()) << arch.status();
  ParamCount count = CountParams(*arch);
  EXPECT_GT(count.total, 0);
  EXPECT_GE(count.total, count.active);
  // 2048 layers * 8192 experts * 3 * 131072 * 524288 alone is ~3.5e18.
  EXPECT_GT(static_cast<double>(count.total), 3.4e18);
}

// Found by tests/fuzz: each of these used to throw through the reader (and
// end `moex serve` when a job named such a config) or to overflow.
TEST(HostileConfigTest, FuzzFindingsAreErrors) {
  EXPECT_THAT(std::string(ParseJsonText(R"({"hidden_size": 1e400})", "c.json").status().message()),
              HasSubstr("c.json: malformed JSON: number overflow"));
  std::string deep(100000, '[');
  EXPECT_THAT(std::string(ParseJsonText("{\"a\": " + deep, "deep.json").status().message()),
              HasSubstr("nested 100001 deep (at most 256)"));
  EXPECT_TRUE(ParseJsonText(R"({"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["})", "s").ok());
  EXPECT_THAT(std::string(ReadJsonFile("/dev/zero").status().message()), HasSubstr("'/dev/zero' is not a regular file"));
  EXPECT_THAT(std::string(LoadModel("/dev/zero").status().message()), HasSubstr("not a regular file"));
  std::map<std::string, TensorInfo> tensors;
  absl::Status huge = ParseSafetensorsHeader(
      R"({"x": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 4]}})", 4, "h.safetensors",
      &tensors);
  EXPECT_THAT(std::string(huge.message()), HasSubstr("too many elements"));
  EXPECT_THAT(std::string(ParseSafetensorsHeader("[1, 2]", 0, "a.safetensors", &tensors).message()),
              HasSubstr("JSON object"));
  EXPECT_THAT(std::string(ParseSafetensorsHeader("{}", std::numeric_limits<int64_t>::max() - 3, "b.safetensors", &tensors)
                              .message()),
              HasSubstr("out of range"));
}

}  // namespace
}  // namespace moex::model
