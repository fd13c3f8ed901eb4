// The files a client names in a JobSpec (issue #19 item 4): only under the
// operator's data roots, links and `..` followed first, regular files only,
// and no error quotes a byte of a file (before: `--weights /etc/shadow`
// answered with its first 8 bytes read as a number and its size, `--model
// FILE` with its first line or a field's value).
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/client_files.h"
#include "moex/cluster/spec_validation.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"
#include "moex/model/presets.h"

namespace moex::cluster {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// What a secret file holds: none of it, nor what its first 8 bytes make as a
// number, nor its size, may show in an error.
constexpr char kSecret[] = "root:$6$SECRET-HASH-do-not-echo:19000:0:99999:7:::\n";

class ClientFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moex_files_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(root());
    fs::create_directories(outside());
    dir_ = fs::canonical(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path root() const { return dir_ / "root"; }
  fs::path outside() const { return dir_ / "outside"; }
  std::string Write(const fs::path& path, const std::string& text) const {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }

  // The spec's error, validated with `roots` as the controller's data roots.
  std::string ErrorOf(moex::v1::JobSpec spec, std::vector<std::string> roots) const {
    absl::Status status = ValidateAndNormalise(&spec, SpecLimits{.max_world_size = 8, .data_roots = roots});
    return status.ok() ? "" : std::string(status.message());
  }
  std::string ErrorOf(const moex::v1::JobSpec& spec) const { return ErrorOf(spec, {root().string()}); }

  static moex::v1::JobSpec Spec(const std::string& model = "tiny", const std::string& weights = "") {
    moex::v1::JobSpec spec;
    spec.set_name("files");
    spec.set_world_size(2);
    spec.set_model(model);
    spec.set_weights(weights);
    spec.set_steps(1);
    return spec;
  }

  // Checks that `error` gives away nothing of the secret file (the test's
  // paths, which hold the pid, left aside).
  void ExpectNothingOfTheSecret(std::string error) const {
    for (size_t at; (at = error.find(dir_.string())) != std::string::npos;) error.erase(at, dir_.string().size());
    uint64_t first_eight = 0;
    std::memcpy(&first_eight, kSecret, 8);
    EXPECT_THAT(error, Not(HasSubstr("SECRET")));
    EXPECT_THAT(error, Not(HasSubstr("root:")));
    EXPECT_THAT(error, Not(HasSubstr(std::to_string(first_eight))));
    EXPECT_THAT(error, Not(HasSubstr(std::to_string(std::strlen(kSecret)))));
  }

  // tiny's layer checkpoint, written under `path`.
  static void WriteTinyCheckpoint(const std::string& path) {
    absl::StatusOr<model::ModelArch> tiny = model::LoadModel("tiny");
    ASSERT_TRUE(tiny.ok());
    absl::StatusOr<ep::MoeLayerSpec> layer = ep::MoeLayerSpec::FromArch(*tiny, std::nullopt);
    ASSERT_TRUE(layer.ok());
    std::vector<int64_t> all;
    for (int64_t e = 0; e < layer->num_experts; ++e) all.push_back(e);
    ASSERT_TRUE(ep::SaveMoeWeights(*layer, *ep::LoadMoeWeights(*layer, nullptr, 1, all), path, model::StorageDtype::kF32).ok());
  }

  fs::path dir_;
};

// /etc/shadow, as a client would name it: refused for being outside the
// roots, before it is opened, with or without roots.
TEST_F(ClientFilesTest, AFileOutsideTheDataRootsIsRefusedSayingWhy) {
  const std::string secret = Write(outside() / "shadow", kSecret);
  std::string error = ErrorOf(Spec("tiny", secret), {});
  EXPECT_EQ(error, "spec.weights '" + secret +
                       "' is outside the controller's data roots (none: start moex serve with --data-root DIR)");
  error = ErrorOf(Spec("tiny", secret));
  EXPECT_EQ(error, "spec.weights '" + secret + "' is outside the controller's data roots (" + root().string() + ")");
  ExpectNothingOfTheSecret(error);
  // A missing file outside answers the same: no oracle of what exists.
  EXPECT_EQ(ErrorOf(Spec("tiny", (outside() / "nothing").string())),
            "spec.weights '" + (outside() / "nothing").string() + "' is outside the controller's data roots (" +
                root().string() + ")");
  error = ErrorOf(Spec(secret), {});
  EXPECT_THAT(error, HasSubstr("spec.model '" + secret + "' is outside the controller's data roots (none: start moex "
                               "serve with --data-root DIR); or name a preset: "));
  ExpectNothingOfTheSecret(error);
  EXPECT_THAT(ErrorOf(Spec("tiny-typo")), HasSubstr("spec.model 'tiny-typo' is neither a preset (dbrx, "));
  // `..` is followed before the check.
  error = ErrorOf(Spec("tiny", (root() / ".." / "outside" / "shadow").string()));
  EXPECT_THAT(error, HasSubstr("is outside the controller's data roots"));
  ExpectNothingOfTheSecret(error);
}

// The same secret inside a root: named, its problem said, not a byte of it.
TEST_F(ClientFilesTest, AFileInsideARootIsNamedNeverQuoted) {
  const std::string secret = Write(root() / "shadow", kSecret);
  std::string error = ErrorOf(Spec("tiny", secret));
  EXPECT_EQ(error, "spec.weights '" + secret + "' is not a safetensors file");
  ExpectNothingOfTheSecret(error);
  error = ErrorOf(Spec(secret));
  EXPECT_EQ(error, "spec.model '" + secret + "' is not JSON (a JSON object)");
  ExpectNothingOfTheSecret(error);
  // A header length that fits but a header that is not JSON.
  std::string framed(8, '\0');
  const uint64_t length = std::strlen(kSecret);
  std::memcpy(framed.data(), &length, 8);
  const std::string fake = Write(root() / "fake.safetensors", framed + kSecret);
  error = ErrorOf(Spec("tiny", fake));
  EXPECT_EQ(error, "spec.weights '" + fake + "' is not a safetensors file");
  EXPECT_THAT(error, Not(HasSubstr("SECRET")));
}

// A config.json whose first line, or a field's value, is a secret string.
TEST_F(ClientFilesTest, AModelConfigsValuesStayOutOfItsErrors) {
  const std::string first_line = Write(root() / "first_line.json", "SECRET-FIRST-LINE\n{\"model_type\": 1}\n");
  EXPECT_EQ(ErrorOf(Spec(first_line)), "spec.model '" + first_line + "' is not JSON (a JSON object)");
  const std::string unknown = Write(root() / "unknown.json", "{\"model_type\": \"SECRET-TYPE\"}");
  std::string error = ErrorOf(Spec(unknown));
  EXPECT_THAT(error, HasSubstr("spec.model '" + unknown + "' is not a model config: field model_type names no model "
                               "type moex reads (dbrx, deepseek_v2"));
  EXPECT_THAT(error, Not(HasSubstr("SECRET")));
  // A preset's config with one field's value replaced by the secret.
  std::optional<model::Preset> preset = model::FindPreset("tiny-dsv3");
  ASSERT_TRUE(preset.has_value());
  const nlohmann::json original = nlohmann::json::parse(preset->config_json);
  nlohmann::json config = original;
  config["scoring_func"] = "SECRET-VALUE";
  const std::string bad_value = Write(root() / "bad_value" / "config.json", config.dump());
  error = ErrorOf(Spec((root() / "bad_value").string()));
  EXPECT_EQ(error, "spec.model '" + bad_value + "' is not a model config: field scoring_func is invalid");
  config = original;
  config["hidden_size"] = "SECRET-NUMBER";
  const std::string bad_number = Write(root() / "bad_number.json", config.dump());
  EXPECT_EQ(ErrorOf(Spec(bad_number)), "spec.model '" + bad_number + "' is not a model config: field hidden_size is invalid");
  config.erase("hidden_size");
  const std::string missing = Write(root() / "missing.json", config.dump());
  EXPECT_EQ(ErrorOf(Spec(missing)), "spec.model '" + missing + "' is not a model config: field hidden_size is missing");
  // The good one runs, and the spec carries the resolved config.json.
  config = original;
  Write(root() / "good" / "config.json", config.dump());
  moex::v1::JobSpec spec = Spec((root() / "good" / ".." / "good").string());
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{.data_roots = {root().string()}}).ok());
  EXPECT_EQ(spec.model(), (root() / "good" / "config.json").string());
}

// A link inside a root that leads out is refused like the path it leads to.
TEST_F(ClientFilesTest, ASymlinkInsideARootLeadingOutIsRefused) {
  const std::string secret = Write(outside() / "shadow", kSecret);
  fs::create_symlink(secret, root() / "link");
  std::string error = ErrorOf(Spec("tiny", (root() / "link").string()));
  EXPECT_EQ(error, "spec.weights '" + (root() / "link").string() + "' leads outside the controller's data roots (" +
                       root().string() + ") through a symbolic link");
  ExpectNothingOfTheSecret(error);
  error = ErrorOf(Spec((root() / "link").string()));
  EXPECT_THAT(error, HasSubstr("leads outside the controller's data roots"));
  ExpectNothingOfTheSecret(error);
  // A directory link, and a config.json inside a root's folder that links out.
  fs::create_directory_symlink(outside(), root() / "out");
  EXPECT_THAT(ErrorOf(Spec("tiny", (root() / "out" / "shadow").string())), HasSubstr("leads outside"));
  fs::create_directories(root() / "model");
  fs::create_symlink(secret, root() / "model" / "config.json");
  error = ErrorOf(Spec((root() / "model").string()));
  EXPECT_EQ(error, "spec.model '" + (root() / "model" / "config.json").string() +
                       "' leads outside the controller's data roots (" + root().string() + ") through a symbolic link");
}

TEST_F(ClientFilesTest, OnlyRegularFilesAreRead) {
  ASSERT_EQ(mkfifo((root() / "fifo").c_str(), 0600), 0);
  EXPECT_EQ(ErrorOf(Spec("tiny", (root() / "fifo").string())),
            "spec.weights '" + (root() / "fifo").string() + "' is not a regular file");
  EXPECT_EQ(ErrorOf(Spec((root() / "fifo").string())), "spec.model '" + (root() / "fifo").string() + "' is not a regular file");
  fs::create_directories(root() / "empty");
  EXPECT_THAT(ErrorOf(Spec("tiny", (root() / "empty").string())),
              HasSubstr("holds neither model.safetensors.index.json nor model.safetensors"));
  EXPECT_EQ(ErrorOf(Spec("tiny", (root() / "none.safetensors").string())),
            "spec.weights '" + (root() / "none.safetensors").string() + "' does not exist");
}

// Every shard an index names is checked as the index is: under the roots, a
// safetensors file; errors number it (its name is the index's content).
TEST_F(ClientFilesTest, AnIndexsShardsAreCheckedToo) {
  const std::string shard = (root() / "ckpt" / "tiny.safetensors").string();
  fs::create_directories(root() / "ckpt");
  WriteTinyCheckpoint(shard);
  absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(shard);
  ASSERT_TRUE(checkpoint.ok());
  nlohmann::json index;
  for (const auto& [name, info] : checkpoint->tensors()) index["weight_map"][name] = "tiny.safetensors";
  const std::string good = Write(root() / "ckpt" / "model.safetensors.index.json", index.dump());
  moex::v1::JobSpec spec = Spec("tiny", (root() / "ckpt").string());
  ASSERT_EQ(ErrorOf(spec), "");
  ASSERT_TRUE(ValidateAndNormalise(&spec, SpecLimits{.data_roots = {root().string()}}).ok());
  EXPECT_EQ(spec.weights(), good);  // the ranks read the index that was checked

  Write(outside() / "shadow", kSecret);
  index["weight_map"]["extra.SECRET"] = "../../outside/shadow";
  const std::string leaky = Write(root() / "leaky" / "model.safetensors.index.json", index.dump());
  fs::copy_file(shard, root() / "leaky" / "tiny.safetensors");
  std::string error = ErrorOf(Spec("tiny", leaky));
  EXPECT_EQ(error, "spec.weights '" + leaky + "': its shard 1 of 2 (by tensor name) is outside the controller's "
                                              "data roots (" + root().string() + ")");
  ExpectNothingOfTheSecret(error);
  index["weight_map"]["extra.SECRET"] = "shadow";
  Write(root() / "leaky" / "shadow", kSecret);
  Write(leaky, index.dump());
  error = ErrorOf(Spec("tiny", leaky));
  EXPECT_EQ(error, "spec.weights '" + leaky + "': its shard 1 of 2 (by tensor name) is not a safetensors file");
  ExpectNothingOfTheSecret(error);
  Write(leaky, "{\"weight_map\": \"SECRET\"}");
  EXPECT_EQ(ErrorOf(Spec("tiny", leaky)),
            "spec.weights '" + leaky + "' is not a safetensors index: field weight_map is missing or not an object");
}

TEST_F(ClientFilesTest, DataRootsMustBeDirectories) {
  EXPECT_THAT(CanonicalDataRoots({(dir_ / "nothing").string()}).status().message(),
              HasSubstr("--data-root '" + (dir_ / "nothing").string() + "': No such file or directory"));
  const std::string file = Write(root() / "file", "x");
  EXPECT_THAT(CanonicalDataRoots({file}).status().message(), HasSubstr("is not a directory"));
  fs::create_directory_symlink(root(), dir_ / "alias");
  absl::StatusOr<std::vector<std::string>> roots = CanonicalDataRoots({(dir_ / "alias").string() + "/"});
  ASSERT_TRUE(roots.ok());
  EXPECT_EQ(*roots, std::vector<std::string>{root().string()});
}

// Unknown fields (a client padding its spec) are dropped, in nested
// messages too.
TEST_F(ClientFilesTest, UnknownFieldsAreDropped) {
  moex::v1::JobSpec spec = Spec();
  spec.mutable_rebalance()->set_policy("eplb");
  std::string bytes = spec.SerializeAsString();
  // Field 999 (a string of 1000 bytes) at the top and in `rebalance`.
  auto unknown = [](std::string* out) {
    out->push_back(static_cast<char>(((999 << 3 | 2) & 0x7f) | 0x80));
    out->push_back(static_cast<char>((999 << 3 | 2) >> 7));
    out->push_back(static_cast<char>((1000 & 0x7f) | 0x80));
    out->push_back(static_cast<char>(1000 >> 7));
    out->append(1000, 'u');
  };
  unknown(&bytes);
  std::string rebalance = spec.rebalance().SerializeAsString();
  unknown(&rebalance);
  bytes.push_back(static_cast<char>(13 << 3 | 2));
  bytes.push_back(static_cast<char>((rebalance.size() & 0x7f) | 0x80));
  bytes.push_back(static_cast<char>(rebalance.size() >> 7));
  bytes += rebalance;
  moex::v1::JobSpec padded;
  ASSERT_TRUE(padded.ParseFromString(bytes));
  ASSERT_GT(padded.ByteSizeLong(), 2000u);
  ASSERT_TRUE(ValidateAndNormalise(&padded, SpecLimits{}).ok());
  EXPECT_LT(padded.ByteSizeLong(), 200u);
  EXPECT_EQ(padded.rebalance().policy(), "eplb");
}

}  // namespace
}  // namespace moex::cluster
