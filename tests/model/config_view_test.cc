// ConfigView and JSON reading: every error names the file and the field, or
// the line and column of a syntax error.
#include "moex/model/config_view.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::model {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;

nlohmann::json Parse(std::string_view text) { return *ParseJsonText(text, "test.json"); }

TEST(ParseJsonTextTest, SyntaxErrorNamesLineAndColumn) {
  absl::StatusOr<nlohmann::json> parsed = ReadJsonFile(MOEX_TEST_FIXTURES "/configs/malformed.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  // Line 4 is `  "num_hidden_layers": 32,,`: the second comma is column 27.
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("malformed.json:4:27: malformed JSON"));
}

TEST(ParseJsonTextTest, TopLevelMustBeAnObject) {
  absl::StatusOr<nlohmann::json> parsed = ParseJsonText("[1, 2]", "list.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("list.json: expected a JSON object"));
}

TEST(ParseJsonTextTest, EmptyAndTruncatedInputs) {
  EXPECT_FALSE(ParseJsonText("", "empty.json").ok());
  absl::StatusOr<nlohmann::json> truncated = ParseJsonText("{\"a\": 1,\n \"b\": [1, 2", "cut.json");
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(std::string(truncated.status().message()), MatchesRegex("cut\\.json:2:[0-9]+: .*"));
}

TEST(ReadJsonFileTest, MissingFileNamesThePath) {
  absl::StatusOr<nlohmann::json> parsed = ReadJsonFile("/nonexistent/config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("/nonexistent/config.json"));
}

TEST(ConfigViewTest, ReadsTypedFields) {
  nlohmann::json json = Parse(R"({"a": 7, "b": 2.0, "c": true, "d": "x", "e": [1, 2], "f": null})");
  ConfigView view(json, "test.json");
  EXPECT_EQ(*view.Int("a", 1, 10), 7);
  EXPECT_EQ(*view.Int("b", 1, 10), 2);  // an integral float is an integer
  EXPECT_TRUE(*view.BoolOr("c", false));
  EXPECT_EQ(*view.String("d"), "x");
  EXPECT_EQ(*view.IntList("e", 0, 5), (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(view.Has("f"));  // null counts as absent
  EXPECT_EQ(*view.IntOr("f", 0, 10, 4), 4);
  EXPECT_FALSE(view.OptionalInt("missing", 0, 1)->has_value());
}

TEST(ConfigViewTest, ErrorsNameSourceFieldAndBounds) {
  nlohmann::json json = Parse(R"({"a": "7k", "b": 1.5, "c": 99, "n": {"x": -1}})");
  ConfigView view(json, "model.json");
  EXPECT_EQ(view.Int("a", 1, 10).status().message(),
            "model.json: field 'a' must be an integer in [1, 10], got \"7k\"");
  EXPECT_THAT(std::string(view.Int("b", 1, 10).status().message()), HasSubstr("got 1.5"));
  EXPECT_THAT(std::string(view.Int("c", 1, 10).status().message()), HasSubstr("[1, 10], got 99"));
  EXPECT_EQ(view.Int("zz", 1, 10).status().message(), "model.json: field 'zz' is missing");
  ConfigView nested = *view.Object("n");
  EXPECT_EQ(nested.Int("x", 0, 5).status().message(),
            "model.json: field 'n.x' must be an integer in [0, 5], got -1");
}

TEST(ConfigViewTest, RejectsHugeAndNonFiniteNumbers) {
  nlohmann::json json = Parse(R"({"big": 18446744073709551615, "huge": 1e300})");
  ConfigView view(json, "t.json");
  EXPECT_FALSE(view.Int("big", 1, 1000).ok());
  EXPECT_FALSE(view.Int("huge", 1, 1000).ok());
}

TEST(ConfigViewTest, AssumedDefaultsAreRecorded) {
  nlohmann::json json = Parse(R"({})");
  ConfigView view(json, "t.json");
  std::vector<std::string> assumed;
  EXPECT_EQ(*view.IntOr("num_key_value_heads", 1, 64, 32, &assumed), 32);
  ASSERT_EQ(assumed.size(), 1u);
  EXPECT_EQ(assumed[0], "t.json: field 'num_key_value_heads' is absent; assumed 32");
}

}  // namespace
}  // namespace moex::model
