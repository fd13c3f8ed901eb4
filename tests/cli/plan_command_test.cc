#include "moex/cli/plan_command.h"

#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace moex::cli {
namespace {

using ::testing::HasSubstr;

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result RunPlanWith(std::vector<std::string> args) {
  CLI::App app;
  PlanFlags flags;
  AddPlanCommand(app, flags);
  args.insert(args.begin(), {"moex", "plan"});
  std::vector<const char*> argv;
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& error) {
    return {2, "", error.what()};
  }
  std::ostringstream out, err;
  int code = RunPlan(flags, out, err);
  return {code, out.str(), err.str()};
}

TEST(PlanCommandTest, JsonOutputParsesAndCarriesTheDeployment) {
  Result result = RunPlanWith({"--model", "qwen3-235b-a22b", "--gpus", "16", "--dtype", "fp8", "--json"});
  ASSERT_EQ(result.code, 0) << result.err;
  nlohmann::json json = nlohmann::json::parse(result.out);
  EXPECT_EQ(json["model"], "qwen3-235b-a22b");
  EXPECT_EQ(json["dtype"], "fp8");
  EXPECT_EQ(json["deployment"]["gpus"], 16);
  EXPECT_EQ(json["deployment"]["experts_per_gpu"], 8);
}

TEST(PlanCommandTest, DefaultModelIsDeepseekV3) {
  Result result = RunPlanWith({});
  ASSERT_EQ(result.code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("deepseek-v3 (deepseek_v3)"));
  EXPECT_THAT(result.out, HasSubstr("671.03B"));
}

TEST(PlanCommandTest, ListShowsEveryPreset) {
  Result result = RunPlanWith({"--list"});
  ASSERT_EQ(result.code, 0) << result.err;
  EXPECT_THAT(result.out, HasSubstr("kimi-k2"));
  EXPECT_THAT(result.out, HasSubstr("nemotron_h"));
}

TEST(PlanCommandTest, ErrorsExitNonZeroWithAMessage) {
  Result missing = RunPlanWith({"--model", "no-such-model"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("'no-such-model' is neither a preset nor a readable file"));
  EXPECT_TRUE(missing.out.empty());
  Result dtype = RunPlanWith({"--dtype", "int3"});
  EXPECT_EQ(dtype.code, 1);
  EXPECT_THAT(dtype.err, HasSubstr("--dtype 'int3'"));
  Result gpus = RunPlanWith({"--gpus", "0"});
  EXPECT_EQ(gpus.code, 1);
  EXPECT_THAT(gpus.err, HasSubstr("--gpus 0"));
  Result malformed = RunPlanWith({"--model", MOEX_TEST_FIXTURES "/configs/malformed.json"});
  EXPECT_EQ(malformed.code, 1);
  EXPECT_THAT(malformed.err, HasSubstr("malformed.json:4:27"));
}

}  // namespace
}  // namespace moex::cli
