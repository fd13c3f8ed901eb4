// Every preset against its publisher's figures.
//
// A published figure is rounded ("671B", "1T") or truncated ("2.4B" for
// DeepSeek-V2-Lite's 2.451B active, "3.3B" for Qwen3-30B-A3B's 3.353B), so a
// count cannot be held closer to it than that rounding: half a unit of the
// last digit, or a whole unit where the publisher truncates. The bar is 1% of
// the figure or that rounding, whichever is larger: 1% for every total here
// except Kimi K2, whose "1T" allows +-50B (our count, 1.026T, is the sum of
// its config's tensors; see docs/plan.md).
//
// Publishers disagree on "active": DeepSeek, Moonshot, OpenAI and NVIDIA
// leave out the input embedding; Mistral, Qwen, Meta, AI21, Databricks and
// AllenAI count it. Each row says which convention its figure uses.
#include <cmath>

#include "gtest/gtest.h"
#include "moex/model/model_loader.h"
#include "moex/model/param_count.h"

namespace moex::model {
namespace {

enum class Active { kWithEmbedding, kWithoutEmbedding };

struct Published {
  const char* preset;
  double total;
  double total_rounding;  // how far the figure's rounding can be from the count
  double active;
  double active_rounding;
  Active convention;
};

void PrintTo(const Published& row, std::ostream* os) { *os << row.preset; }

class PublishedSizeTest : public ::testing::TestWithParam<Published> {};

double Tolerance(double figure, double rounding) { return std::max(0.01 * figure, rounding); }

TEST_P(PublishedSizeTest, TotalAndActiveMatchThePublishedFigures) {
  const Published& row = GetParam();
  absl::StatusOr<ModelArch> arch = LoadModel(row.preset);
  ASSERT_TRUE(arch.ok()) << arch.status();
  ParamCount count = CountParams(*arch);
  double total = static_cast<double>(count.total);
  double active = static_cast<double>(row.convention == Active::kWithEmbedding
                                          ? count.active
                                          : count.active_excl_embedding);
  EXPECT_NEAR(total, row.total, Tolerance(row.total, row.total_rounding)) << row.preset;
  EXPECT_NEAR(active, row.active, Tolerance(row.active, row.active_rounding)) << row.preset;
}

constexpr double B = 1e9;
constexpr Active kWith = Active::kWithEmbedding;
constexpr Active kWithout = Active::kWithoutEmbedding;

INSTANTIATE_TEST_SUITE_P(
    Presets, PublishedSizeTest,
    ::testing::Values(
        // DeepSeek-V3 README_WEIGHTS: 671B main model; 36.6B activated
        // including the 0.9B output head (so without the input embedding).
        Published{"deepseek-v3", 671 * B, 0.5 * B, 36.6 * B, 0.05 * B, kWithout},
        Published{"deepseek-v2", 236 * B, 0.5 * B, 21 * B, 0.5 * B, kWithout},
        Published{"deepseek-v2-lite", 15.7 * B, 0.05 * B, 2.4 * B, 0.1 * B, kWithout},
        Published{"kimi-k2", 1000 * B, 50 * B, 32 * B, 0.5 * B, kWithout},
        Published{"qwen3-235b-a22b", 235 * B, 0.5 * B, 22 * B, 0.5 * B, kWith},
        Published{"qwen3-30b-a3b", 30.5 * B, 0.05 * B, 3.3 * B, 0.1 * B, kWith},
        Published{"qwen2-57b-a14b", 57 * B, 0.5 * B, 14 * B, 0.5 * B, kWith},
        Published{"qwen1.5-moe-a2.7b", 14.3 * B, 0.05 * B, 2.7 * B, 0.05 * B, kWith},
        Published{"mixtral-8x7b", 46.7 * B, 0.05 * B, 12.9 * B, 0.05 * B, kWith},
        Published{"mixtral-8x22b", 141 * B, 0.5 * B, 39 * B, 0.5 * B, kWith},
        Published{"llama4-maverick", 400 * B, 0.5 * B, 17 * B, 0.5 * B, kWith},
        Published{"llama4-scout", 109 * B, 0.5 * B, 17 * B, 0.5 * B, kWith},
        // OpenAI's model card: 116.83B total, 5.13B active; 20.91B, 3.61B.
        Published{"gpt-oss-120b", 116.83 * B, 0.005 * B, 5.13 * B, 0.005 * B, kWithout},
        Published{"gpt-oss-20b", 20.91 * B, 0.005 * B, 3.61 * B, 0.005 * B, kWithout},
        Published{"olmoe-1b-7b", 6.9 * B, 0.05 * B, 1.3 * B, 0.05 * B, kWith},
        Published{"dbrx", 132 * B, 0.5 * B, 36 * B, 0.5 * B, kWith},
        Published{"jamba-v0.1", 52 * B, 0.5 * B, 12 * B, 0.5 * B, kWith},
        // NVIDIA: 31.6B total, about 3.2B active (3.6B with embeddings).
        Published{"nemotron-3-nano-30b-a3b", 31.6 * B, 0.05 * B, 3.2 * B, 0.05 * B, kWithout},
        Published{"qwen2.5-7b", 7.61 * B, 0.005 * B, 7.61 * B, 0.005 * B, kWith},
        // Qwen: "80B total, 3B activated". Our count: 79.67B (the text model;
        // its MTP layer is not in the figure), 3.87B active with the embedding
        // and LM head, 3.25B without both: no definition reaches 3.0B within
        // 1%, so the name's "A3B" is read as truncated (a whole unit).
        Published{"qwen3-next-80b-a3b", 80 * B, 0.5 * B, 3 * B, 1 * B, kWith},
        // Qwen3.5-397B-A17B: 397B is the text model and the vision encoder
        // (0.46B, not counted here: 396.35B), without the MTP layer; 17.35B
        // active with the embedding and LM head ("A17B", truncated).
        Published{"qwen3.5-397b-a17b", 397 * B, 0.5 * B, 17 * B, 1 * B, kWith},
        // DeepSeek-V4 (model cards): Pro 1.6T total, 49B active; Flash 284B,
        // 13B. moex counts 1.57T / 48.52B and 283.81B / 13.28B with the
        // embedding and head: the compressors, indexers and hyper-connection
        // weights, whose shapes config.json does not give, are not counted
        // (moex plan names them), and "1.6T" is rounded to 0.1T.
        Published{"deepseek-v4-pro", 1600 * B, 50 * B, 49 * B, 0.5 * B, kWith},
        Published{"deepseek-v4-flash", 284 * B, 0.5 * B, 13 * B, 0.5 * B, kWith}),
    [](const ::testing::TestParamInfo<Published>& param_info) {
      std::string name = param_info.param.preset;
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return name;
    });

// Exact counts published with the checkpoints (sum of every tensor).
TEST(ExactCountTest, MatchesCheckpointTensorSums) {
  EXPECT_EQ(CountParams(*LoadModel("mixtral-8x7b")).total, 46702792704);
  EXPECT_EQ(CountParams(*LoadModel("llama-3.1-8b")).total, 8030261248);
  EXPECT_EQ(CountParams(*LoadModel("mistral-7b")).total, 7241732096);
  EXPECT_EQ(CountParams(*LoadModel("qwen2.5-7b")).total, 7615616512);
}

TEST(ExactCountTest, DenseModelsAreFullyActive) {
  for (const char* name : {"llama-3.1-8b", "mistral-7b", "qwen2.5-7b"}) {
    ParamCount count = CountParams(*LoadModel(name));
    EXPECT_EQ(count.active, count.total) << name;
  }
}

// Qwen publishes non-embedding totals too: 234B and 29.9B.
TEST(ExactCountTest, QwenNonEmbeddingTotals) {
  for (auto [name, figure] : {std::pair{"qwen3-235b-a22b", 234e9}, std::pair{"qwen3-30b-a3b", 29.9e9}}) {
    ParamCount count = CountParams(*LoadModel(name));
    double non_embedding = static_cast<double>(count.total - count.part(Part::kEmbedding).total -
                                               count.part(Part::kLmHead).total);
    EXPECT_NEAR(non_embedding, figure, 0.01 * figure) << name;
  }
}

}  // namespace
}  // namespace moex::model
