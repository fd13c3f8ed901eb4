// Family readers: layer structure and hand-computed parameter counts.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/config_view.h"
#include "moex/model/model_loader.h"
#include "moex/model/param_count.h"
#include "moex/model/presets.h"

namespace moex::model {
namespace {

using ::testing::HasSubstr;

ModelArch Load(std::string_view name) {
  absl::StatusOr<ModelArch> arch = LoadModel(name);
  EXPECT_TRUE(arch.ok()) << arch.status();
  return arch.ok() ? *arch : ModelArch{};
}

ModelArch FromText(std::string_view text) {
  absl::StatusOr<nlohmann::json> json = ParseJsonText(text, "inline.json");
  EXPECT_TRUE(json.ok()) << json.status();
  absl::StatusOr<ModelArch> arch = ParseModelConfig(*json, "inline.json");
  EXPECT_TRUE(arch.ok()) << arch.status();
  return arch.ok() ? *arch : ModelArch{};
}

TEST(QwenMoeTest, TinyMatchesHandCount) {
  // hidden 64, 2 layers, 4 heads of 16 (2 kv heads), 8 experts of width 32, top-2, vocab 1024.
  // attention: q 64*64 + k 64*32 + v 64*32 + o 64*64 + q/k norms 2*16 = 12320
  // experts: 8 * 3*64*32 = 49152; router 8*64 = 512; norms 2*64 = 128
  // total = 2 * (12320 + 49152 + 512 + 128) + 2 * 1024*64 + 64 = 255360
  ParamCount count = CountParams(Load("tiny"));
  EXPECT_EQ(count.total, 255360);
  // active experts: 2 * 6144 = 12288 per layer
  EXPECT_EQ(count.active, 2 * (12320 + 12288 + 512 + 128) + 2 * 65536 + 64);
  EXPECT_EQ(count.part(Part::kRoutedExperts).total, 2 * 49152);
}

TEST(DeepseekTest, TinyDsv3MatchesHandCount) {
  // MLA: q_a 64*32 + q_norm 32 + q_b 32*4*24 + kv_a 64*24 + kv_norm 16 + kv_b 16*4*32
  //      + o 4*16*64 = 12848
  // routed 16 * 3*64*32 = 98304; shared 6144; router 16*64 + bias 16 = 1040; norms 128
  ModelArch arch = Load("tiny-dsv3");
  ParamCount count = CountParams(arch);
  EXPECT_EQ(count.part(Part::kAttention).total, 2 * 12848);
  EXPECT_EQ(count.part(Part::kRouter).total, 2 * 1040);
  EXPECT_EQ(count.total, 2 * (12848 + 98304 + 6144 + 1040 + 128) + 2 * 65536 + 64);
  EXPECT_EQ(arch.router.scoring, "sigmoid");
  EXPECT_EQ(arch.router.num_groups, 4);
  EXPECT_EQ(arch.router.topk_groups, 2);
  EXPECT_TRUE(arch.router.has_correction_bias);
  EXPECT_DOUBLE_EQ(arch.router.routed_scaling_factor, 2.5);
}

TEST(DeepseekTest, V3LayoutAndMtp) {
  ModelArch arch = Load("deepseek-v3");
  EXPECT_EQ(arch.layers.size(), 61u);
  EXPECT_EQ(arch.num_moe_layers(), 58);  // first_k_dense_replace = 3
  EXPECT_EQ(arch.num_dense_layers(), 3);
  EXPECT_EQ(arch.layers[2].ffn, FfnKind::kDense);
  EXPECT_EQ(arch.layers[3].ffn, FfnKind::kMoe);
  EXPECT_EQ(arch.first_moe().num_experts, 256);
  EXPECT_EQ(arch.first_moe().experts_per_token, 8);
  // MLA caches the 512-d latent plus the 64-d rope key.
  EXPECT_EQ(arch.layers[0].attention.kv_cache_elems_per_token, 576);
  ASSERT_EQ(arch.mtp_layers.size(), 1u);
  ParamCount count = CountParams(arch);
  // README_WEIGHTS: 11.5B unique MTP parameters.
  EXPECT_NEAR(static_cast<double>(count.mtp.total), 11.5e9, 0.15e9);
  EXPECT_TRUE(arch.assumptions.empty()) << arch.assumptions[0];
}

TEST(DeepseekTest, V2LiteHasNoQueryLora) {
  ModelArch arch = Load("deepseek-v2-lite");
  // q_proj 2048*16*192 + kv_a 2048*576 + kv_norm 512 + kv_b 512*16*256 + o 16*128*2048
  EXPECT_EQ(arch.layers[0].attention_params,
            2048 * 16 * 192 + 2048 * 576 + 512 + 512 * 16 * 256 + 16 * 128 * 2048);
  EXPECT_EQ(arch.router.scoring, "softmax");
}

TEST(DeepseekV4Test, CountsWhatItCanAndNamesTheRest) {
  absl::StatusOr<ModelArch> arch = LoadModel(MOEX_TEST_FIXTURES "/configs/deepseek_v4_small.json");
  ASSERT_TRUE(arch.ok()) << arch.status();
  ParamCount count = CountParams(*arch);
  // wq_a 128*64 + q_norm 64 + wq_b 64*128 + wkv 128*32 + kv_norm 32 + wo_a 128*64
  //   + wo_b 4*64*128 + sinks 4
  EXPECT_EQ(count.part(Part::kAttention).total,
            2 * (128 * 64 + 64 + 64 * 128 + 128 * 32 + 32 + 128 * 64 + 4 * 64 * 128 + 4));
  EXPECT_EQ(count.part(Part::kRoutedExperts).total, 2 * 8 * 3 * 128 * 32);
  EXPECT_EQ(arch->router.scoring, "sqrtsoftplus");
  // Compressors/indexers, hyper-connections, hash layers and MTP are named.
  EXPECT_EQ(arch->uncounted.size(), 4u);
  EXPECT_THAT(arch->uncounted[0], HasSubstr("compress_ratios"));
}

TEST(QwenMoeTest, SparseStepAndMlpOnlyLayers) {
  ModelArch arch = FromText(R"({"model_type": "qwen2_moe", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 6, "num_attention_heads": 2, "intermediate_size": 16,
      "moe_intermediate_size": 4, "shared_expert_intermediate_size": 8, "num_experts": 4,
      "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3]})");
  // Layers 1, 3, 5 are sparse by step; 3 is forced dense.
  std::vector<FfnKind> kinds;
  for (const LayerSpec& layer : arch.layers) kinds.push_back(layer.ffn);
  EXPECT_EQ(kinds, (std::vector<FfnKind>{FfnKind::kDense, FfnKind::kMoe, FfnKind::kDense,
                                         FfnKind::kDense, FfnKind::kDense, FfnKind::kMoe}));
  // Qwen2-MoE: q/k/v biases; shared expert gate [1, 8] counted with the router.
  EXPECT_EQ(arch.layers[0].attention_params, 4 * 8 * 8 + 8 + 8 + 8);
  EXPECT_EQ(arch.layers[1].moe.router_params, 4 * 8 + 8);
  EXPECT_EQ(arch.layers[1].moe.shared_params, 3 * 8 * 8);
}

TEST(Llama4Test, InterleavedMoeSharedExpertAndVision) {
  ModelArch maverick = Load("llama4-maverick");
  EXPECT_EQ(maverick.num_moe_layers(), 24);  // every second layer
  EXPECT_EQ(maverick.layers[0].ffn, FfnKind::kDense);
  EXPECT_EQ(maverick.layers[1].ffn, FfnKind::kMoe);
  EXPECT_EQ(maverick.layers[0].dense_mlp_params, 3LL * 5120 * 16384);
  EXPECT_EQ(maverick.layers[1].moe.shared_params, 3LL * 5120 * 8192);
  EXPECT_EQ(maverick.layers[0].attention.sliding_window, 8192);  // chunked
  EXPECT_EQ(maverick.layers[3].attention.sliding_window, 0);     // NoPE: global
  EXPECT_GT(maverick.vision_params, 0);
  ParamCount count = CountParams(maverick);
  EXPECT_EQ(count.part(Part::kVision).active, 0);
  EXPECT_EQ(Load("llama4-scout").num_moe_layers(), 48);
}

TEST(Llama4Test, FlatTextConfigReads) {
  ModelArch arch = FromText(R"({"model_type": "llama4_text", "vocab_size": 10, "hidden_size": 8,
      "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
      "intermediate_size": 4, "intermediate_size_mlp": 16, "num_local_experts": 4,
      "num_experts_per_tok": 1, "interleave_moe_layer_step": 2})");
  EXPECT_EQ(arch.num_moe_layers(), 2);
  EXPECT_EQ(arch.vision_params, 0);
}

TEST(GptOssTest, BiasesSinksAndSlidingLayers) {
  ModelArch arch = Load("gpt-oss-20b");
  const LayerSpec& layer = arch.layers[0];
  // gate_up [2880*2, 2880] + bias 5760, down [2880, 2880] + bias 2880
  EXPECT_EQ(layer.moe.params_per_expert, 3LL * 2880 * 2880 + 5760 + 2880);
  // q 2880*4096 + k,v 2880*512 each, o 4096*2880, biases 4096+512+512+2880, 64 sinks
  EXPECT_EQ(layer.attention_params,
            2880LL * 4096 * 2 + 2 * 2880 * 512 + 4096 + 1024 + 2880 + 64);
  EXPECT_EQ(layer.moe.router_params, 32 * 2880 + 32);
  EXPECT_EQ(arch.layers[0].attention.sliding_window, 128);
  EXPECT_EQ(arch.layers[1].attention.sliding_window, 0);
}

TEST(JambaTest, PeriodsAndOffsets) {
  ModelArch arch = Load("jamba-v0.1");
  int attention = 0, mamba = 0;
  for (const LayerSpec& layer : arch.layers) {
    attention += layer.mixer == MixerKind::kAttention;
    mamba += layer.mixer == MixerKind::kMamba;
  }
  EXPECT_EQ(attention, 4);  // layers 4, 12, 20, 28
  EXPECT_EQ(mamba, 28);
  EXPECT_EQ(arch.layers[4].mixer, MixerKind::kAttention);
  EXPECT_EQ(arch.num_moe_layers(), 16);  // odd layers
  EXPECT_EQ(arch.layers[1].ffn, FfnKind::kMoe);
}

TEST(NemotronHTest, PatternDecidesEveryLayer) {
  ModelArch arch = Load("nemotron-3-nano-30b-a3b");
  int counts[3] = {0, 0, 0};  // mamba, attention, moe
  for (const LayerSpec& layer : arch.layers) {
    counts[0] += layer.mixer == MixerKind::kMamba;
    counts[1] += layer.mixer == MixerKind::kAttention;
    counts[2] += layer.ffn == FfnKind::kMoe;
  }
  EXPECT_EQ(counts[0], 23);
  EXPECT_EQ(counts[1], 6);
  EXPECT_EQ(counts[2], 23);
  // Squared-ReLU experts have no gate: up + down.
  EXPECT_EQ(arch.first_moe().params_per_expert, 2LL * 2688 * 1856);
  EXPECT_EQ(arch.expert_activation, "relu2");
}

TEST(DbrxTest, NestedConfigs) {
  ModelArch arch = Load("dbrx");
  EXPECT_EQ(arch.hidden_size, 6144);
  EXPECT_EQ(arch.first_moe().num_experts, 16);
  EXPECT_EQ(arch.first_moe().experts_per_token, 4);
  // Wqkv [6144 + 2*8*128, 6144] + out_proj [6144, 6144]
  EXPECT_EQ(arch.layers[0].attention_params, 6144LL * (6144 + 2048) + 6144LL * 6144);
}

TEST(LoaderTest, ReadsASnapshotDirectoryAndAPresetFileAlike) {
  absl::StatusOr<ModelArch> from_dir = LoadModel(MOEX_TEST_FIXTURES "/snapshot");
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_EQ(CountParams(*from_dir).total, CountParams(Load("olmoe-1b-7b")).total);
  EXPECT_THAT(from_dir->source, HasSubstr("snapshot/config.json"));
}

TEST(LoaderTest, EveryPresetLoads) {
  ASSERT_GE(AllPresets().size(), 14u);
  for (const Preset& preset : AllPresets()) {
    absl::StatusOr<ModelArch> arch = LoadModel(preset.name);
    ASSERT_TRUE(arch.ok()) << preset.name << ": " << arch.status();
    EXPECT_GT(CountParams(*arch).total, 0) << preset.name;
  }
  EXPECT_TRUE(FindPreset(kDefaultModel).has_value());
}

}  // namespace
}  // namespace moex::model
