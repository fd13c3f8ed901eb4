#include "moex/placement/engine_formats.h"

#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/placement/policy.h"

namespace moex::placement {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

std::string LoadError(const char* text, EngineFormat format) {
  absl::StatusOr<Matrix> load = ParseEngineLoad(json::parse(text), format, "l.json");
  return load.ok() ? "ok" : std::string(load.status().message());
}

std::string PlacementError(const char* text, EngineFormat format) {
  absl::StatusOr<IndexMatrix> p = ParseEnginePlacement(json::parse(text), format, "p.json");
  return p.ok() ? "ok" : std::string(p.status().message());
}

TEST(EngineFormatsTest, FormatNames) {
  EXPECT_EQ(*ParseEngineFormat("sglang"), EngineFormat::kSglang);
  EXPECT_EQ(*ParseEngineFormat("vllm"), EngineFormat::kVllm);
  EXPECT_EQ(*ParseEngineFormat("moex"), EngineFormat::kMoex);
  EXPECT_EQ(EngineFormatName(EngineFormat::kSglang), "sglang");
  EXPECT_THAT(std::string(ParseEngineFormat("deepspeed").status().message()),
              HasSubstr("unknown format 'deepspeed'; known: moex, sglang, vllm"));
}

// The dump of SGLang's recorder in mode "stat" (_StatAccumulator.dump):
// rank, logical_count [buffered steps][layers][logical experts], and the
// utilization rate, as the .pt holds them once converted to JSON.
TEST(EngineFormatsTest, ReadsSglangStatDumpSummedOverSteps) {
  const char* dump = R"({"rank": 0, "average_utilization_rate_over_window": null,
    "logical_count": [[[1, 2, 3, 4], [0, 0, 0, 0]], [[10, 20, 30, 40], [5, 0, 0, 1]]]})";
  absl::StatusOr<Matrix> load = ParseEngineLoad(json::parse(dump), EngineFormat::kSglang, "d.json");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(*load, (Matrix{{11, 22, 33, 44}, {5, 0, 0, 1}}));
  // The 2-D form --init-expert-location also takes ([layers][logical]).
  load = ParseEngineLoad(json::parse(R"({"logical_count": [[1, 2], [3, 4]]})"), EngineFormat::kSglang, "d.json");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(*load, (Matrix{{1, 2}, {3, 4}}));
}

TEST(EngineFormatsTest, TheCheckedInSglangFixtureReads) {
  std::ifstream in(std::string(MOEX_TEST_FIXTURES) + "/sglang_expert_distribution.json");
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<Matrix> load = ParseEngineLoad(json::parse(text.str()), EngineFormat::kSglang, "fixture");
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_EQ(load->size(), 4u);
  EXPECT_EQ((*load)[0], std::vector<double>(32, 0.0));  // the dense layer
  EXPECT_GT((*load)[1][0] + (*load)[1][1], 0.0);
}

TEST(EngineFormatsTest, LoadErrorsNameTheFileAndTheField) {
  const EngineFormat sg = EngineFormat::kSglang;
  EXPECT_THAT(LoadError(R"({"logical_counts": []})", sg), HasSubstr("l.json: field 'logical_count'"));
  EXPECT_THAT(LoadError(R"([1, 2])", sg), HasSubstr("field 'logical_count'"));
  EXPECT_THAT(LoadError(R"({"physical_to_logical_map": [[0]]})", sg), HasSubstr("holds a placement"));
  EXPECT_THAT(LoadError(R"({"logical_count": []})", sg), HasSubstr("logical_count must be a non-empty list of layers"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[1, 2], [3]]})", sg),
              HasSubstr("logical_count[1] has 1 experts, logical_count[0] has 2"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[1, 2], [3, "x"]]})", sg),
              HasSubstr("logical_count[1][1] (layer 1, expert 1) is not a finite non-negative number"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[1, -2]]})", sg), HasSubstr("logical_count[0][1]"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[1, 2], 7]})", sg), HasSubstr("logical_count[1] must be a non-empty list"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[[1, 2]], [[1, 2], [3, 4]]]})", sg),
              HasSubstr("logical_count[1] is 2 layers x 2 experts, logical_count[0] is 1 x 2"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[[1, 2]], [[1, true]]]})", sg), HasSubstr("logical_count[1][0][1]"));
  EXPECT_THAT(LoadError(R"({"logical_count": [[1e308, 1]], "x": 0})", sg), "ok");
  EXPECT_THAT(LoadError(R"({"logical_count": [[[1e308]], [[1e308]]]})", sg), HasSubstr("overflows at layer 0, expert 0"));
  EXPECT_THAT(LoadError(R"({"load": [[1], [2, 3]]})", EngineFormat::kMoex), HasSubstr("load[1] has 2 experts"));
}

// vLLM: the logical load EplbState plans from, or its physical window and map.
TEST(EngineFormatsTest, ReadsVllmLoads) {
  absl::StatusOr<Matrix> load =
      ParseEngineLoad(json::parse(R"({"global_expert_load": [[3, 1, 2]]})"), EngineFormat::kVllm, "v.json");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(*load, (Matrix{{3, 1, 2}}));
  // 4 logical experts on 6 physical (3 ranks of 2): the example of
  // eplb_state.py's docstring, 2 steps in the window.
  load = ParseEngineLoad(json::parse(R"({
      "physical_to_logical_map": [[0, 1, 2, 3, 0, 1], [0, 2, 0, 1, 0, 3]],
      "expert_load_window": [[[1, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 6]], [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]]]})"),
                         EngineFormat::kVllm, "v.json");
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(*load, (Matrix{{3, 2, 1, 1}, {9, 4, 2, 7}}));
  EXPECT_THAT(LoadError(R"({"expert_load_pass": [[1, 2]]})", EngineFormat::kVllm),
              HasSubstr("field 'physical_to_logical_map' is missing: expert_load_pass counts physical experts"));
  EXPECT_THAT(LoadError(R"({"expert_load_pass": [[1, 2]], "physical_to_logical_map": [[0, 1, 1]]})", EngineFormat::kVllm),
              HasSubstr("physical_to_logical_map is 1 layers x 3 physical experts, expert_load_pass 1 x 2"));
  EXPECT_THAT(LoadError(R"({"expert_load_pass": [[1, 2]], "physical_to_logical_map": [[0, 2]]})", EngineFormat::kVllm),
              HasSubstr("physical_to_logical_map[0][1] (layer 0, physical expert 1) is logical expert 2, beyond the 2"));
  EXPECT_THAT(LoadError(R"({"expert_load_pass": [[1, 2], [1, 1]], "physical_to_logical_map": [[0, 1], [1, 1]]})",
                        EngineFormat::kVllm),
              HasSubstr("physical_to_logical_map[1] holds no replica of logical expert 0"));
  EXPECT_THAT(LoadError(R"({"load": [[1]]})", EngineFormat::kVllm), HasSubstr("needs field 'global_expert_load'"));
}

TEST(EngineFormatsTest, PlacementErrorsNameTheField) {
  const EngineFormat sg = EngineFormat::kSglang;
  EXPECT_EQ(*ParseEnginePlacement(json::parse(R"({"physical_to_logical_map": [[0, 1, 1], [1, 0, 0]]})"), sg, "p"),
            (IndexMatrix{{0, 1, 1}, {1, 0, 0}}));
  EXPECT_THAT(PlacementError(R"({"logical_count": [[1]]})", sg), HasSubstr("holds load statistics"));
  EXPECT_THAT(PlacementError(R"({})", sg), HasSubstr("p.json: field 'physical_to_logical_map'"));
  EXPECT_THAT(PlacementError(R"({"physical_to_logical_map": [[0, 1], [0]]})", sg),
              HasSubstr("physical_to_logical_map[1] has 1 physical experts, physical_to_logical_map[0] has 2"));
  EXPECT_THAT(PlacementError(R"({"physical_to_logical_map": [[0, -1]]})", sg),
              HasSubstr("physical_to_logical_map[0][1] (layer 0, physical expert 1) is not a logical expert id"));
  EXPECT_THAT(PlacementError(R"({"physical_to_logical_map": [[0, 1.5]]})", sg), HasSubstr("[0][1]"));
  EXPECT_THAT(PlacementError(R"({"physical_to_logical_map": [[18446744073709551615]]})", sg), HasSubstr("[0][0]"));
  EXPECT_THAT(PlacementError(R"({"physical_to_logical_map": [[0], "x"]})", EngineFormat::kVllm),
              HasSubstr("physical_to_logical_map[1] must be a non-empty list"));
  EXPECT_THAT(PlacementError(R"({"layers": [{"phy2log": [0, 99999999]}]})", EngineFormat::kMoex),
              HasSubstr("layers[0].phy2log[1] is too large"));
}

TEST(EngineFormatsTest, TorchFilesAreRefusedWithTheConversion) {
  EXPECT_TRUE(LooksLikeTorchFile("dump.pt", ""));
  EXPECT_TRUE(LooksLikeTorchFile("x.json", std::string_view("PK\x03\x04", 4)));
  EXPECT_TRUE(LooksLikeTorchFile("x", "\x80\x02"));
  EXPECT_FALSE(LooksLikeTorchFile("x.json", "{\"lo"));
  std::string message(TorchFileError("d.pt").message());
  EXPECT_THAT(message, HasSubstr("d.pt: a torch file"));
  EXPECT_THAT(message, HasSubstr("torch.load(sys.argv[1],weights_only=True)"));
}

// A plan exported for SGLang reads back as the same map; SGLang's
// --init-expert-location passes the file's keys to init_by_mapping, so the
// file holds that one key.
TEST(EngineFormatsTest, SglangExportRoundTrips) {
  PlanInput in;
  in.load = ZipfLoad(3, 16, 1.0, 7);
  in.num_replicas = 20, in.num_gpus = 4;
  absl::StatusOr<EplbPlacement> plan = PlanPlacement("refined", in);
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<json> out = ExportPlacement(plan->phy2log, 16, EngineFormat::kSglang);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  ASSERT_TRUE(out->contains("physical_to_logical_map"));
  absl::StatusOr<IndexMatrix> back = ParseEnginePlacement(json::parse(out->dump()), EngineFormat::kSglang, "x");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, plan->phy2log);
  // The moex form reads back too.
  out = ExportPlacement(plan->phy2log, 16, EngineFormat::kMoex);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*ParseEnginePlacement(*out, EngineFormat::kMoex, "x"), plan->phy2log);
}

// SGLang wants a row per decoder layer: the rows around the MoE layers get
// SGLang's trivial map (slot s holds expert s % experts).
TEST(EngineFormatsTest, ExportPadsLayersWithTheTrivialMap) {
  absl::StatusOr<json> out =
      ExportPlacement(IndexMatrix{{2, 1, 0, 2}}, 3, EngineFormat::kSglang, ExportOptions{.total_layers = 3, .first_layer = 1});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->at("physical_to_logical_map"), json::parse("[[0, 1, 2, 0], [2, 1, 0, 2], [0, 1, 2, 0]]"));
  EXPECT_THAT(std::string(ExportPlacement(IndexMatrix{{0, 1}}, 2, EngineFormat::kSglang, {.total_layers = 1, .first_layer = 1})
                              .status()
                              .message()),
              HasSubstr("do not fit in 1 exported layers"));
  EXPECT_FALSE(ExportPlacement(IndexMatrix{{0, 5}}, 2, EngineFormat::kSglang).ok());
  // Found by tests/fuzz: an expert with no slot let another have more
  // replicas than vLLM's logical_to_physical_map has room for.
  EXPECT_THAT(std::string(ExportPlacement(IndexMatrix{{0, 2, 2}}, 3, EngineFormat::kVllm).status().message()),
              HasSubstr("layer 0 of the placement holds no replica of expert 1"));
  EXPECT_FALSE(ExportPlacement(IndexMatrix{}, 2, EngineFormat::kSglang).ok());
}

// vLLM's EplbState layout: the docstring's example (4 logical experts, 6
// physical, 3 ranks) gives its logical_to_physical_map and replica counts.
TEST(EngineFormatsTest, VllmExportIsEplbStateLayout) {
  absl::StatusOr<json> out =
      ExportPlacement(IndexMatrix{{0, 1, 2, 3, 0, 1}, {0, 2, 0, 1, 0, 3}}, 4, EngineFormat::kVllm);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->at("logical_to_physical_map"),
            json::parse("[[[0, 4, -1], [1, 5, -1], [2, -1, -1], [3, -1, -1]], [[0, 2, 4], [3, -1, -1], [1, -1, -1], [5, -1, -1]]]"));
  EXPECT_EQ(out->at("logical_replica_count"), json::parse("[[2, 2, 1, 1], [3, 1, 1, 1]]"));
  EXPECT_EQ(*ParseEnginePlacement(*out, EngineFormat::kVllm, "v"), (IndexMatrix{{0, 1, 2, 3, 0, 1}, {0, 2, 0, 1, 0, 3}}));
}

TEST(EngineFormatsTest, BalancednessIsMeanOverMax) {
  EXPECT_DOUBLE_EQ(Balancedness({1, 1, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(Balancedness({4, 0, 0, 0}), 0.25);
  EXPECT_DOUBLE_EQ(Balancedness({3, 1}), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(Balancedness({0, 0}), 1.0);
  EXPECT_DOUBLE_EQ(Balancedness({3, 1}) * Imbalance({3, 1}), 1.0);
  // Layer 0: mean 2, max 3; layer 1: mean 10, max 10.
  BalanceSummary s = SummarizeBalance(Matrix{{3, 1}, {10, 10}});
  EXPECT_DOUBLE_EQ(s.max_imbalance, 1.5);
  EXPECT_DOUBLE_EQ(s.mean_imbalance, 1.25);
  EXPECT_DOUBLE_EQ(s.sglang_balancedness, (2.0 / 3.0 + 1.0) / 2);  // mean over layers
  EXPECT_DOUBLE_EQ(s.vllm_balancedness, 12.0 / 13.0);              // sums over layers
  EXPECT_DOUBLE_EQ(SummarizeBalance(Matrix{{0, 0}}).vllm_balancedness, 1.0);
}

}  // namespace
}  // namespace moex::placement
