#include "moex/model/hf_cache.h"

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/model_loader.h"

namespace moex::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kConfig[] = R"({"model_type": "mixtral", "vocab_size": 32, "hidden_size": 16,
  "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_local_experts": 4, "num_experts_per_tok": 2})";

// A hub folder in a fresh temporary directory, removed afterwards.
class HfCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "moex-hf-cache-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    hub_ = root_ / "hub";
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // models--org--name/snapshots/<rev>/, with config.json unless told not to.
  fs::path AddSnapshot(const std::string& repo, const std::string& rev, bool with_config = true) {
    fs::path dir = hub_ / repo / "snapshots" / rev;
    fs::create_directories(dir);
    if (with_config) std::ofstream(dir / "config.json") << kConfig;
    return dir;
  }
  void SetMain(const std::string& repo, const std::string& rev) {
    fs::create_directories(hub_ / repo / "refs");
    std::ofstream(hub_ / repo / "refs" / "main") << rev;  // huggingface_hub writes no newline
  }
  static void Age(const fs::path& dir, int seconds) {
    fs::last_write_time(dir, fs::file_time_type::clock::now() - std::chrono::seconds(seconds));
  }
  HubDir Hub() const { return {hub_.string(), "$HF_HUB_CACHE"}; }

  fs::path root_;
  fs::path hub_;
};

TEST(HfIdTest, OrgSlashNameLooksLikeAnId) {
  EXPECT_TRUE(LooksLikeHfId("deepseek-ai/DeepSeek-V3"));
  EXPECT_TRUE(LooksLikeHfId("Qwen/Qwen2.5-7B"));
  EXPECT_TRUE(LooksLikeHfId("openai/gpt-oss-120b"));
  EXPECT_FALSE(LooksLikeHfId("deepseek-v3"));
  EXPECT_FALSE(LooksLikeHfId("bad/config.json"));
  EXPECT_FALSE(LooksLikeHfId("/abs/path"));
  EXPECT_FALSE(LooksLikeHfId("a/b/c"));
  EXPECT_FALSE(LooksLikeHfId("../x"));
  EXPECT_FALSE(LooksLikeHfId("org/.hidden"));
  EXPECT_FALSE(LooksLikeHfId("org/na..me"));
  EXPECT_FALSE(LooksLikeHfId("org/na me"));
  EXPECT_FALSE(LooksLikeHfId("org/"));
}

TEST(HfHubDirTest, EnvironmentPrecedence) {
  HubEnv env{.hf_hub_cache = "/a", .hf_home = "/b", .xdg_cache_home = "/c", .home = "/d"};
  EXPECT_EQ(FindHubDir(env).path, "/a");
  EXPECT_EQ(FindHubDir(env).chosen_by, "$HF_HUB_CACHE");
  env.hf_hub_cache.clear();
  EXPECT_EQ(FindHubDir(env).path, "/b/hub");
  EXPECT_EQ(FindHubDir(env).chosen_by, "$HF_HOME/hub");
  env.hf_home.clear();
  EXPECT_EQ(FindHubDir(env).path, "/c/huggingface/hub");
  env.xdg_cache_home.clear();
  EXPECT_EQ(FindHubDir(env).path, "/d/.cache/huggingface/hub");
  EXPECT_EQ(FindHubDir(env).chosen_by, "~/.cache/huggingface/hub");
  env.home.clear();
  EXPECT_EQ(FindHubDir(env).path, "");
}

TEST_F(HfCacheTest, RefsMainWinsOverANewerSnapshot) {
  const fs::path main = AddSnapshot("models--org--model", "aaaa1111");
  const fs::path newer = AddSnapshot("models--org--model", "bbbb2222");
  Age(main, 3600);
  SetMain("models--org--model", "aaaa1111");
  absl::StatusOr<std::string> found = FindSnapshot("org/model", Hub());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, main.string());
}

TEST_F(HfCacheTest, WithoutRefsMainTheNewestSnapshotByMtime) {
  const fs::path old = AddSnapshot("models--org--model", "ffff0000");
  const fs::path newest = AddSnapshot("models--org--model", "0000ffff");
  Age(old, 60);
  absl::StatusOr<std::string> found = FindSnapshot("org/model", Hub());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, newest.string());
  // refs/main naming a snapshot that is not there: the newest again.
  SetMain("models--org--model", "deadbeef");
  found = FindSnapshot("org/model", Hub());
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(*found, newest.string());
}

TEST_F(HfCacheTest, NotInTheCacheSaysWhereItLookedAndThatNothingIsDownloaded) {
  absl::StatusOr<std::string> found = FindSnapshot("deepseek-ai/DeepSeek-V3", Hub());
  ASSERT_FALSE(found.ok());
  EXPECT_TRUE(absl::IsNotFound(found.status()));
  const std::string message(found.status().message());
  EXPECT_THAT(message, HasSubstr("model 'deepseek-ai/DeepSeek-V3' is not in the local Hugging Face cache"));
  EXPECT_THAT(message, HasSubstr((hub_ / "models--deepseek-ai--DeepSeek-V3").string()));
  EXPECT_THAT(message, HasSubstr("$HF_HUB_CACHE"));
  EXPECT_THAT(message, HasSubstr("moex downloads nothing: fetch it with `huggingface-cli download "
                                 "deepseek-ai/DeepSeek-V3`"));
}

TEST_F(HfCacheTest, ASnapshotWithoutConfigOrNoSnapshotIsAnError) {
  fs::create_directories(hub_ / "models--org--empty" / "snapshots");
  absl::StatusOr<std::string> empty = FindSnapshot("org/empty", Hub());
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("holds no snapshot"));

  AddSnapshot("models--org--partial", "abc", /*with_config=*/false);
  SetMain("models--org--partial", "abc");
  absl::StatusOr<std::string> partial = FindSnapshot("org/partial", Hub());
  ASSERT_FALSE(partial.ok());
  EXPECT_THAT(std::string(partial.status().message()),
              HasSubstr("(the snapshot refs/main names) has no config.json"));
  EXPECT_THAT(std::string(partial.status().message()), HasSubstr("huggingface-cli download org/partial config.json"));
}

TEST_F(HfCacheTest, ResolveModelLeavesPresetsAndPathsAloneAndLoadsAnId) {
  const fs::path snapshot = AddSnapshot("models--org--model", "1234");
  const HubEnv env{.hf_home = root_.string()};  // $HF_HOME/hub is hub_
  EXPECT_EQ(*ResolveModel("deepseek-v3", env), "deepseek-v3");
  EXPECT_EQ(*ResolveModel("no-such-model", env), "no-such-model");  // LoadModel says why
  EXPECT_EQ(*ResolveModel("", env), "");
  // An existing relative path that looks like an id is a path.
  fs::path cwd = fs::current_path();
  fs::current_path(hub_);
  EXPECT_EQ(*ResolveModel("models--org--model/snapshots", env), "models--org--model/snapshots");
  fs::current_path(cwd);

  absl::StatusOr<std::string> resolved = ResolveModel("org/model", env);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, snapshot.string());
  absl::StatusOr<ModelArch> arch = LoadModel(*resolved);
  ASSERT_TRUE(arch.ok()) << arch.status();
  EXPECT_EQ(arch->model_type, "mixtral");

  absl::StatusOr<std::string> missing = ResolveModel("org/other", env);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("$HF_HOME/hub"));
}

TEST_F(HfCacheTest, ResolveModelReadsTheProcessEnvironment) {
  const fs::path snapshot = AddSnapshot("models--org--model", "1234");
  ASSERT_EQ(setenv("HF_HUB_CACHE", hub_.c_str(), 1), 0);
  ASSERT_EQ(setenv("HF_HOME", "/nonexistent-hf-home", 1), 0);
  absl::StatusOr<std::string> resolved = ResolveModel("org/model");
  unsetenv("HF_HUB_CACHE");
  unsetenv("HF_HOME");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, snapshot.string());
}

}  // namespace
}  // namespace moex::model
