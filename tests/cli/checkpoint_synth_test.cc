// `moex checkpoint synth` on a small DeepSeek-V3-style model (8 experts,
// hidden 256, width 128, a shared expert, layer 0 dense): the shards, the
// index, the tensor names and dtypes of each format, and values that are the
// seed's, decoded here from the bytes (not through a checkpoint reader).
#include "moex/cli/checkpoint_synth.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cli/checkpoint_command.h"
#include "moex/core/stored_matrix.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace moex::cli {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int64_t kHidden = 256, kWidth = 128, kExperts = 8;
constexpr uint64_t kSeed = 7;

class CheckpointSynthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moex_synth_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_ / "model");
    nlohmann::json config = {
        {"model_type", "deepseek_v3"}, {"vocab_size", 1024}, {"hidden_size", kHidden}, {"intermediate_size", 512},
        {"moe_intermediate_size", kWidth}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
        {"num_key_value_heads", 4}, {"n_shared_experts", 1}, {"n_routed_experts", kExperts},
        {"routed_scaling_factor", 2.5}, {"kv_lora_rank", 16}, {"q_lora_rank", 32}, {"qk_rope_head_dim", 8},
        {"v_head_dim", 16}, {"qk_nope_head_dim", 16}, {"topk_method", "noaux_tc"}, {"n_group", 4},
        {"topk_group", 2}, {"num_experts_per_tok", 2}, {"first_k_dense_replace", 1}, {"norm_topk_prob", true},
        {"scoring_func", "sigmoid"}, {"hidden_act", "silu"},
        {"quantization_config", {{"quant_method", "something-else"}}}};
    std::ofstream(dir_ / "model" / "config.json") << config.dump(2);
  }
  void TearDown() override { fs::remove_all(dir_); }

  SynthOptions Options(const std::string& dtype) const {
    SynthOptions options;
    options.model = (dir_ / "model").string();
    options.layers = "1-2";
    options.dtype = dtype;
    options.out = (dir_ / ("out-" + dtype)).string();
    options.seed = kSeed;
    options.shard_gib = 0.0002;  // about 210 KB: several shards a layer
    options.threads = 2;
    return options;
  }

  // Synthesises, then checks what every format shares: shard names, the
  // index against the shards' headers, no temporary left behind.
  model::Checkpoint SynthAndOpen(const SynthOptions& options, SynthResult* result_out = nullptr) {
    std::ostringstream progress;
    absl::StatusOr<SynthResult> result = SynthesizeCheckpoint(options, &progress);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return {};
    EXPECT_GT(result->shards.size(), 2u);
    EXPECT_THAT(progress.str(), HasSubstr("moex checkpoint synth: "));
    const std::string n = std::to_string(result->shards.size());
    std::set<std::string> files;
    for (size_t i = 0; i < result->shards.size(); ++i) {
      const std::string want = "model-" + std::string(5 - std::to_string(i + 1).size(), '0') + std::to_string(i + 1) +
                               "-of-" + std::string(5 - n.size(), '0') + n + ".safetensors";
      EXPECT_EQ(result->shards[i].file, want);
      EXPECT_EQ(result->shards[i].bytes, static_cast<int64_t>(fs::file_size(fs::path(options.out) / want)));
      // Each shard parses on its own.
      absl::StatusOr<model::Checkpoint> shard = model::Checkpoint::Open((fs::path(options.out) / want).string());
      EXPECT_TRUE(shard.ok()) << shard.status();
      if (shard.ok()) {
        EXPECT_EQ(static_cast<int64_t>(shard->tensors().size()), result->shards[i].tensors);
      }
      files.insert(want);
    }
    for (const fs::directory_entry& entry : fs::directory_iterator(options.out)) {
      const std::string name = entry.path().filename().string();
      EXPECT_TRUE(files.count(name) || name == "config.json" || name == "model.safetensors.index.json") << name;
    }
    nlohmann::json index = nlohmann::json::parse(std::ifstream(fs::path(options.out) / "model.safetensors.index.json"));
    absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(options.out);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    if (!checkpoint.ok()) return {};
    // The index maps every tensor, each to the shard that holds it (Open
    // checked that), and its total_size is the tensors' bytes.
    EXPECT_EQ(index["weight_map"].size(), checkpoint->tensors().size());
    EXPECT_EQ(static_cast<int64_t>(checkpoint->tensors().size()), result->tensors);
    int64_t total = 0;
    for (const auto& [name, info] : checkpoint->tensors()) {
      total += info.end - info.begin;
      EXPECT_EQ(fs::path(info.file).filename().string(), index["weight_map"][name].get<std::string>()) << name;
    }
    EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
    EXPECT_EQ(result->tensor_bytes, total);
    if (result_out != nullptr) *result_out = *result;
    return *checkpoint;
  }

  static std::vector<std::byte> Bytes(const model::Checkpoint& checkpoint, const std::string& name) {
    model::TensorInfo info = *checkpoint.Info(name);
    std::vector<std::byte> bytes(static_cast<size_t>(info.end - info.begin));
    std::ifstream in(info.file, std::ios::binary);
    in.seekg(info.begin);
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return bytes;
  }

  // The stored matrix from its value tensor and (when given) scale tensor.
  static StoredMatrix Decode(const model::Checkpoint& checkpoint, WeightFormat format, const std::string& values,
                             const std::string& scales, int64_t rows, int64_t cols) {
    std::vector<std::byte> bytes = Bytes(checkpoint, values);
    if (!scales.empty()) {
      std::vector<std::byte> more = Bytes(checkpoint, scales);
      bytes.insert(bytes.end(), more.begin(), more.end());
    }
    EXPECT_EQ(static_cast<int64_t>(bytes.size()), StoredMatrix::ValueBytes(format, rows, cols) +
                                                      StoredMatrix::ScaleBytes(format, rows, cols));
    return StoredMatrix::FromBytes(format, rows, cols, bytes.data());
  }

  // What `moex run --seed` makes for the weight: SeededUniform * scale.
  static Tensor Seeded(const std::string& name, int64_t rows, int64_t cols, float scale) {
    Tensor t({rows, cols});
    for (int64_t i = 0; i < t.size(); ++i) t.values[i] = ep::SeededUniform(kSeed, name, i) * scale;
    return t;
  }

  static nlohmann::json Config(const std::string& out) {
    return nlohmann::json::parse(std::ifstream(fs::path(out) / "config.json"));
  }

  fs::path dir_;
};

const float kIn = 1.0f / std::sqrt(static_cast<float>(kHidden));
const float kOut = 1.0f / std::sqrt(static_cast<float>(kWidth));

TEST_F(CheckpointSynthTest, Fp8HasBlockScalesAndTheSeedsValues) {
  SynthOptions options = Options("fp8");
  model::Checkpoint ckpt = SynthAndOpen(options);
  for (int layer : {1, 2}) {
    const std::string block = "model.layers." + std::to_string(layer) + ".mlp.";
    EXPECT_EQ(ckpt.Info(block + "gate.weight")->dtype, "BF16");
    EXPECT_EQ(ckpt.Info(block + "gate.e_score_correction_bias")->dtype, "F32");
    EXPECT_EQ(ckpt.Info(block + "gate.e_score_correction_bias")->shape, (std::vector<int64_t>{kExperts}));
    for (int e = 0; e < kExperts; ++e) {
      for (const char* p : {"gate", "up", "down"}) {
        const std::string name = block + "experts." + std::to_string(e) + "." + p + "_proj.weight";
        const bool down = std::string(p) == "down";
        EXPECT_EQ(ckpt.Info(name)->dtype, "F8_E4M3") << name;
        EXPECT_EQ(ckpt.Info(name)->shape, (down ? std::vector<int64_t>{kHidden, kWidth} : std::vector<int64_t>{kWidth, kHidden}));
        EXPECT_EQ(ckpt.Info(name + "_scale_inv")->dtype, "F32");
        EXPECT_EQ(ckpt.Info(name + "_scale_inv")->shape, (down ? std::vector<int64_t>{2, 1} : std::vector<int64_t>{1, 2}));
      }
    }
    EXPECT_TRUE(ckpt.Has(block + "shared_experts.down_proj.weight_scale_inv"));
  }
  EXPECT_EQ(ckpt.tensors().size(), 2u * (2 + 2 * 3 * (kExperts + 1)));

  // An expert's down projection: the seed's values within e4m3's error, and
  // byte for byte what quantising the whole matrix at once gives.
  const std::string down = "model.layers.2.mlp.experts.5.down_proj.weight";
  StoredMatrix m = Decode(ckpt, WeightFormat::kFP8Block, down, down + "_scale_inv", kHidden, kWidth);
  Tensor want = Seeded(down, kHidden, kWidth, kOut), got = m.ToTensor();
  for (int64_t i = 0; i < want.size(); ++i) {
    float scale;
    std::memcpy(&scale, m.scales + 4 * (i / kWidth / 128), 4);
    ASSERT_LE(std::fabs(got.values[i] - want.values[i]), std::fabs(want.values[i]) / 16 + scale / 512) << i;
  }
  StoredMatrix whole = *StoredMatrix::Quantize(want, WeightFormat::kFP8Block);
  std::vector<std::byte> expected(static_cast<size_t>(whole.bytes()));
  whole.CopyBytes(expected.data());
  std::vector<std::byte> written = Bytes(ckpt, down), scales = Bytes(ckpt, down + "_scale_inv");
  written.insert(written.end(), scales.begin(), scales.end());
  EXPECT_TRUE(written == expected);

  // The router in BF16 and the correction bias in F32: the seed's, rounded.
  const std::string router = "model.layers.1.mlp.gate.weight";
  Tensor r = Decode(ckpt, WeightFormat::kBF16, router, "", kExperts, kHidden).ToTensor();
  Tensor r_want = Seeded(router, kExperts, kHidden, kIn);
  for (int64_t i = 0; i < r.size(); ++i) ASSERT_EQ(r.values[i], Bf16ToFloat(FloatToBf16(r_want.values[i]))) << i;
  const std::string bias = "model.layers.1.mlp.gate.e_score_correction_bias";
  EXPECT_EQ(Decode(ckpt, WeightFormat::kF32, bias, "", 1, kExperts).ToTensor().values,
            Seeded(bias, 1, kExperts, 0.05f).values);

  nlohmann::json quant = Config(options.out)["quantization_config"];
  EXPECT_EQ(quant["quant_method"], "fp8");
  EXPECT_EQ(quant["fmt"], "e4m3");
  EXPECT_EQ(quant["weight_block_size"], nlohmann::json::array({128, 128}));
  EXPECT_EQ(quant["activation_scheme"], "dynamic");
  absl::StatusOr<model::ModelArch> arch = model::LoadModel(options.out);  // --model DIR works
  ASSERT_TRUE(arch.ok()) << arch.status();
  EXPECT_EQ(arch->hidden_size, kHidden);
}

TEST_F(CheckpointSynthTest, Mxfp4HasBlocksAndScalesPerExpert) {
  SynthOptions options = Options("mxfp4");
  options.layers = "2";
  model::Checkpoint ckpt = SynthAndOpen(options);
  const std::string base = "model.layers.2.mlp.experts.3.gate_proj";
  EXPECT_FALSE(ckpt.Has(base + ".weight"));
  EXPECT_EQ(ckpt.Info(base + "_blocks")->dtype, "U8");
  EXPECT_EQ(ckpt.Info(base + "_blocks")->shape, (std::vector<int64_t>{kWidth, kHidden / 32, 16}));
  EXPECT_EQ(ckpt.Info(base + "_scales")->dtype, "U8");
  EXPECT_EQ(ckpt.Info(base + "_scales")->shape, (std::vector<int64_t>{kWidth, kHidden / 32}));
  EXPECT_TRUE(ckpt.Has("model.layers.2.mlp.shared_experts.down_proj_blocks"));
  EXPECT_EQ(ckpt.Info("model.layers.2.mlp.gate.weight")->dtype, "BF16");
  EXPECT_FALSE(ckpt.Has("model.layers.1.mlp.gate.weight"));

  StoredMatrix m = Decode(ckpt, WeightFormat::kMXFP4, base + "_blocks", base + "_scales", kWidth, kHidden);
  Tensor want = Seeded(base + ".weight", kWidth, kHidden, kIn), got = m.ToTensor();
  for (int64_t i = 0; i < want.size(); ++i) {
    const float block = std::ldexp(1.0f, static_cast<int>(static_cast<uint8_t>(m.scales[i / 32])) - 127);
    ASSERT_LE(std::fabs(got.values[i] - want.values[i]), std::fabs(want.values[i]) / 4 + block / 4) << i;
  }
  EXPECT_EQ(Config(options.out)["quantization_config"], (nlohmann::json{{"quant_method", "mxfp4"}}));
}

TEST_F(CheckpointSynthTest, Bf16IsTheSeedRoundedAndHasNoQuantizationConfig) {
  SynthOptions options = Options("bf16");
  model::Checkpoint ckpt = SynthAndOpen(options);
  const std::string up = "model.layers.1.mlp.shared_experts.up_proj.weight";
  EXPECT_EQ(ckpt.Info(up)->dtype, "BF16");
  EXPECT_FALSE(ckpt.Has(up + "_scale_inv"));
  // Checkpoint::Read reads BF16: the same values `moex run --weights` gets.
  Tensor got = *ckpt.Read(up, {kWidth, kHidden});
  Tensor want = Seeded(up, kWidth, kHidden, kIn);
  for (int64_t i = 0; i < want.size(); ++i) ASSERT_EQ(got.values[i], Bf16ToFloat(FloatToBf16(want.values[i]))) << i;
  EXPECT_FALSE(Config(options.out).contains("quantization_config"));
}

TEST_F(CheckpointSynthTest, ADenseLayerIsRefusedNamingTheMoeLayers) {
  SynthOptions options = Options("fp8");
  options.layers = "0-1";
  absl::StatusOr<SynthResult> result = SynthesizeCheckpoint(options, nullptr);
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("layer 0 is a dense layer; its MoE layers are 1 and 2"));
  EXPECT_FALSE(fs::exists(options.out));  // refused before anything is written
}

TEST_F(CheckpointSynthTest, ANonEmptyOutIsRefusedUnlessForced) {
  SynthOptions options = Options("bf16");
  options.layers = "";  // the first MoE layer
  fs::create_directories(options.out);
  std::ofstream(fs::path(options.out) / "notes.txt") << "mine";
  std::ofstream(fs::path(options.out) / "model-00003-of-00042.safetensors") << "stale";
  absl::StatusOr<SynthResult> refused = SynthesizeCheckpoint(options, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("is not empty (2 entries"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--force"));
  options.force = true;
  absl::StatusOr<SynthResult> forced = SynthesizeCheckpoint(options, nullptr);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(forced->layers, std::vector<int64_t>{1});
  EXPECT_TRUE(fs::exists(fs::path(options.out) / "notes.txt"));
  EXPECT_FALSE(fs::exists(fs::path(options.out) / "model-00003-of-00042.safetensors"));
  EXPECT_TRUE(model::Checkpoint::Open(options.out).ok());
}

TEST_F(CheckpointSynthTest, LayerLists) {
  model::ModelArch arch = *model::LoadModel((dir_ / "model").string());
  EXPECT_EQ(*ParseSynthLayers("", arch), std::vector<int64_t>{1});
  EXPECT_EQ(*ParseSynthLayers("2,1", arch), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(*ParseSynthLayers("1-2", arch), (std::vector<int64_t>{1, 2}));
  EXPECT_THAT(std::string(ParseSynthLayers("1,1-2", arch).status().message()), HasSubstr("names layer 1 twice"));
  EXPECT_THAT(std::string(ParseSynthLayers("3", arch).status().message()), HasSubstr("outside the model's 3 layers"));
  EXPECT_THAT(std::string(ParseSynthLayers("2-1", arch).status().message()), HasSubstr("'2-1' is not a layer index"));
  EXPECT_THAT(std::string(ParseSynthLayers("x", arch).status().message()), HasSubstr("'x' is not a layer index"));
}

TEST_F(CheckpointSynthTest, TheCommandPrintsJsonAndDefaultsToRunsSeed) {
  CLI::App app;
  CheckpointFlags flags;
  AddCheckpointCommand(app, flags);
  const std::string model = (dir_ / "model").string(), out = (dir_ / "cmd").string();
  std::vector<const char*> argv = {"moex", "checkpoint", "synth", "--model", model.c_str(), "--dtype",
                                   "mxfp4", "--out", out.c_str(), "--json"};
  app.parse(static_cast<int>(argv.size()), argv.data());
  EXPECT_EQ(flags.synth.seed, 1u);
  std::ostringstream stdout_text, stderr_text;
  ASSERT_EQ(RunCheckpoint(flags, stdout_text, stderr_text), 0) << stderr_text.str();
  nlohmann::json summary = nlohmann::json::parse(stdout_text.str());
  EXPECT_EQ(summary["dtype"], "mxfp4");
  EXPECT_EQ(summary["layers"], nlohmann::json::array({1}));
  EXPECT_EQ(summary["files"].size(), 1u);
  EXPECT_EQ(summary["files"][0]["file"], "model-00001-of-00001.safetensors");
  EXPECT_EQ(summary["tensors"], 2 + 2 * 3 * (kExperts + 1));
  EXPECT_GT(summary["bytes"].get<int64_t>(), summary["total_size"].get<int64_t>());
  EXPECT_TRUE(summary.contains("seconds"));
  // A second run into the same folder is refused.
  ASSERT_EQ(RunCheckpoint(flags, stdout_text, stderr_text), 1);
  EXPECT_THAT(stderr_text.str(), HasSubstr("moex checkpoint synth: error: --out '" + out + "' is not empty"));
}

}  // namespace
}  // namespace moex::cli
