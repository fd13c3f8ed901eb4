#include "moex/placement/placement_file.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::placement {
namespace {

using ::testing::HasSubstr;

TEST(PlacementFileTest, ReadsLayersAndNamesEveryBadField) {
  auto parsed = ParsePlacementFile(nlohmann::json::parse(R"({"layers": [{"phy2log": [0, 1, 1]}, {"phy2log": [2]}]})"), "p.json");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, (IndexMatrix{{0, 1, 1}, {2}}));
  auto error = [](const char* text) {
    return std::string(ParsePlacementFile(nlohmann::json::parse(text), "p.json").status().message());
  };
  EXPECT_THAT(error(R"({"layer": []})"), HasSubstr("p.json: field 'layers' must be a list"));
  EXPECT_THAT(error(R"([1])"), HasSubstr("field 'layers'"));
  // Found by tests/fuzz: a layer that is not an object used to throw.
  EXPECT_THAT(error(R"({"layers": [1]})"), HasSubstr("layers[0].phy2log must be a list"));
  EXPECT_THAT(error(R"({"layers": [{"phy2log": [0, -3]}]})"), HasSubstr("layers[0].phy2log[1] is not a non-negative integer"));
  EXPECT_THAT(error(R"({"layers": [{"phy2log": [0.5]}]})"), HasSubstr("phy2log[0]"));
}

}  // namespace
}  // namespace moex::placement
