#include "moex/cli/plan_command.h"

#include <stdlib.h>

#include <filesystem>
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

constexpr char kDeepseekFp8[] = MOEX_TEST_FIXTURES "/configs/deepseek_v3_fp8.json";

TEST(PlanCommandTest, DtypeComesFromTheConfigsQuantizationConfig) {
  Result table = RunPlanWith({"--model", kDeepseekFp8});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_THAT(table.out,
              HasSubstr("\ndtype        fp8 (from quantization_config: quant_method fp8, e4m3, 128x128 blocks)\n"));
  EXPECT_THAT(table.out, HasSubstr(" at fp8 (e4m3"));
  Result json = RunPlanWith({"--model", kDeepseekFp8, "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["dtype"], "fp8");
  EXPECT_EQ(j["dtype_source"], "quantization_config");
}

TEST(PlanCommandTest, DtypeFlagOverridesTheConfig) {
  Result table = RunPlanWith({"--model", kDeepseekFp8, "--dtype", "bf16"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("\ndtype        bf16 (from --dtype)\n"));
  EXPECT_THAT(table.out, HasSubstr("note: the config declares fp8 (quantization_config: quant_method fp8"));
  Result json = RunPlanWith({"--model", kDeepseekFp8, "--dtype", "fp4", "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["dtype"], "fp4");
  EXPECT_EQ(j["dtype_source"], "--dtype");
}

TEST(PlanCommandTest, PresetsKeepTheBf16Default) {
  Result table = RunPlanWith({"--model", "deepseek-v3"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("\ndtype        bf16 (default)\n"));
  Result json = RunPlanWith({"--model", "deepseek-v3", "--json"});
  ASSERT_EQ(json.code, 0) << json.err;
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["dtype"], "bf16");
  EXPECT_EQ(j["dtype_source"], "default");
}

// A hub folder holding one snapshot of deepseek-ai/DeepSeek-V3 (the fp8
// fixture), named by $HF_HUB_CACHE for the test's length.
class PlanHfCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "moex-plan-hub-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    hub_ = pattern;
    const std::filesystem::path repo = hub_ / "models--deepseek-ai--DeepSeek-V3";
    std::filesystem::create_directories(repo / "snapshots" / "86518964eaef84e3fdd98e9861759a1384f9c29d");
    std::filesystem::copy_file(kDeepseekFp8,
                               repo / "snapshots" / "86518964eaef84e3fdd98e9861759a1384f9c29d" / "config.json");
    ASSERT_EQ(setenv("HF_HUB_CACHE", hub_.c_str(), 1), 0);
  }
  void TearDown() override {
    unsetenv("HF_HUB_CACHE");
    std::error_code ignored;
    std::filesystem::remove_all(hub_, ignored);
  }
  std::filesystem::path hub_;
};

TEST_F(PlanHfCacheTest, AHuggingFaceIdPlansTheCachedSnapshot) {
  Result result = RunPlanWith({"--model", "deepseek-ai/DeepSeek-V3", "--json"});
  ASSERT_EQ(result.code, 0) << result.err;
  nlohmann::json j = nlohmann::json::parse(result.out);
  EXPECT_THAT(j["model"].get<std::string>(),
              HasSubstr("models--deepseek-ai--DeepSeek-V3/snapshots/86518964eaef84e3fdd98e9861759a1384f9c29d"));
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["dtype"], "fp8");
}

TEST_F(PlanHfCacheTest, AnIdNotInTheCacheIsAClearError) {
  Result result = RunPlanWith({"--model", "moonshotai/Kimi-K2-Instruct"});
  EXPECT_EQ(result.code, 1);
  EXPECT_TRUE(result.out.empty());
  EXPECT_THAT(result.err, HasSubstr("moex plan: error: model 'moonshotai/Kimi-K2-Instruct' is not in the local "
                                    "Hugging Face cache (looked in "));
  EXPECT_THAT(result.err, HasSubstr("the hub is $HF_HUB_CACHE"));
  EXPECT_THAT(result.err, HasSubstr("moex downloads nothing: fetch it with `huggingface-cli download "
                                    "moonshotai/Kimi-K2-Instruct`"));
}

}  // namespace
}  // namespace moex::cli
