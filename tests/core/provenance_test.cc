#include "moex/core/provenance.h"

#include <gtest/gtest.h>

namespace moex {
namespace {

TEST(ProvenanceTest, SaysWhatRanWhereAndWhen) {
  const char* argv[] = {"moex", "run", "--model", "tiny"};
  RecordCommandLine(4, argv);
  nlohmann::json p = ProvenanceJson({4, "ucx", ""});
  EXPECT_EQ(p["command_line"], nlohmann::json({"moex", "run", "--model", "tiny"}));
  EXPECT_EQ(p["world_size"], 4);
  EXPECT_EQ(p["transport"], "ucx");
  EXPECT_EQ(p["gpu"], "none");
  for (const char* key : {"moex_version", "commit", "host", "cpu", "date"}) {
    ASSERT_TRUE(p[key].is_string()) << key;
    EXPECT_FALSE(p[key].get<std::string>().empty()) << key;
  }
  const std::string date = p["date"];
  EXPECT_EQ(date.size(), 20u) << date;  // 2026-12-02T12:55:03Z
  EXPECT_EQ(date.back(), 'Z');
  EXPECT_EQ(ProvenanceJson({1, "nccl", "NVIDIA H200 (device 0)"})["gpu"], "NVIDIA H200 (device 0)");
}

}  // namespace
}  // namespace moex
