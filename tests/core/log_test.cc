#include "moex/core/log.h"

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace moex::log {
namespace {

TEST(LogTest, TextIsOneLineAndQuotesWhatNeedsIt) {
  EXPECT_EQ(Render(false, "serve", "job submitted", {{"job_id", "j-1"}, {"world_size", "4"}}),
            "serve: job submitted job_id=j-1 world_size=4");
  // A value with spaces, quotes or a newline is quoted and escaped; a
  // message's newlines become spaces: one event, one line.
  EXPECT_EQ(Render(false, "serve", "two\nlines", {{"why", "a \"b\"\nc"}, {"empty", ""}}),
            "serve: two lines why=\"a \\\"b\\\"\\nc\" empty=\"\"");
}

TEST(LogTest, JsonMembersParseWhateverTheFieldsHold) {
  const std::string hostile = std::string("x\"},\"level\":\"forged\n\x01\\", 18);
  const std::string line =
      "{\"time\":\"t\",\"level\":\"info\"," + Render(true, "run", "msg \"q\"", {{"name", hostile}}) + "}";
  nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["component"], "run");
  EXPECT_EQ(j["msg"], "msg \"q\"");
  EXPECT_EQ(j["name"], hostile);
}

TEST(LogTest, UnknownFormatIsRefusedNamingTheFlag) {
  absl::Status status = Configure("yaml", "serve");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("--log-format 'yaml' is not one of: text, json"), std::string::npos);
}

}  // namespace
}  // namespace moex::log
