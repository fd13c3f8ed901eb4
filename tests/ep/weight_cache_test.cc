// The host weight cache: what a relaunched rank reads back, what it must not
// (another source, another shape, a cut or corrupt entry), and a layer's
// load that takes from it only what it holds.
#include "moex/ep/weight_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/moe_weights.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;

class WeightCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = std::filesystem::temp_directory_path() /
            ("moex-weight-cache-test-" + std::to_string(getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  std::string Dir() const { return (root_ / "cache").string(); }

  static Tensor Values(std::vector<int64_t> shape, float offset) {
    Tensor t(std::move(shape));
    for (int64_t i = 0; i < t.size(); ++i) t.values[i] = offset + 0.5f * static_cast<float>(i);
    return t;
  }

  static MoeLayerSpec Spec() {
    MoeLayerSpec spec;
    spec.model_type = "qwen3_moe";
    spec.layer = 1;
    spec.hidden = 16;
    spec.num_experts = 8;
    spec.top_k = 2;
    spec.expert_width = 12;
    spec.shared_width = 12;
    spec.router.scoring = "softmax";
    return spec;
  }

  static void ExpectSame(const MoeWeights& a, const MoeWeights& b) {
    EXPECT_EQ(a.router.values, b.router.values);
    ASSERT_EQ(a.experts.size(), b.experts.size());
    for (const auto& [e, w] : a.experts) {
      EXPECT_EQ(w.gate.ToTensor().values, b.experts.at(e).gate.ToTensor().values) << "expert " << e;
      EXPECT_EQ(w.up.ToTensor().values, b.experts.at(e).up.ToTensor().values) << "expert " << e;
      EXPECT_EQ(w.down.ToTensor().values, b.experts.at(e).down.ToTensor().values) << "expert " << e;
    }
    ASSERT_TRUE(a.shared && b.shared);
    EXPECT_EQ(a.shared->down.ToTensor().values, b.shared->down.ToTensor().values);
  }

  std::filesystem::path root_;
};

TEST_F(WeightCacheTest, RoundTripsAndCreatesAPrivateDirectory) {
  absl::StatusOr<WeightCache> cache = WeightCache::Open(Dir());
  ASSERT_TRUE(cache.ok()) << cache.status();
  struct stat st {};
  ASSERT_EQ(stat(Dir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  const Tensor t = Values({3, 5}, 1.0f);
  ASSERT_TRUE(cache->Put("model.layers.1.mlp.experts.2.up_proj.weight", "seed 1", t).ok());
  std::string rejected;
  std::optional<Tensor> back = cache->Get("model.layers.1.mlp.experts.2.up_proj.weight", "seed 1", {3, 5}, &rejected);
  ASSERT_TRUE(back.has_value()) << rejected;
  EXPECT_EQ(back->shape, t.shape);
  EXPECT_EQ(back->values, t.values);
  // Absent: a plain miss, nothing to report.
  EXPECT_FALSE(cache->Get("model.layers.1.mlp.experts.3.up_proj.weight", "seed 1", {3, 5}, &rejected).has_value());
  EXPECT_EQ(rejected, "");
  // No temporary file is left behind.
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(Dir())) {
    ++files;
    EXPECT_THAT(entry.path().string(), ::testing::EndsWith(".moexw"));
  }
  EXPECT_EQ(files, 1);
}

TEST_F(WeightCacheTest, AnEntryFromAnotherSourceOrShapeIsNotUsed) {
  WeightCache cache = *WeightCache::Open(Dir());
  ASSERT_TRUE(cache.Put("w", "seed 1", Values({4, 4}, 0)).ok());
  std::string rejected;
  EXPECT_FALSE(cache.Get("w", "seed 2", {4, 4}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("another source"));
  rejected.clear();
  EXPECT_FALSE(cache.Get("w", "seed 1", {2, 8}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("shape [4, 4], not [2, 8]"));
  // Names that map to the same file do not read each other's entry.
  ASSERT_TRUE(cache.Put("a/b", "seed 1", Values({2}, 0)).ok());
  rejected.clear();
  EXPECT_FALSE(cache.Get("a_b", "seed 1", {2}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("another source"));
  // A name cannot climb out of the directory.
  EXPECT_EQ(std::filesystem::path(cache.PathFor("../../etc/passwd")).parent_path(), std::filesystem::path(Dir()));
}

TEST_F(WeightCacheTest, ACutOrCorruptEntryIsAMissSayingWhy) {
  WeightCache cache = *WeightCache::Open(Dir());
  ASSERT_TRUE(cache.Put("w", "seed 1", Values({64}, 0)).ok());
  const std::string path = cache.PathFor("w");
  const auto size = std::filesystem::file_size(path);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 7));
    f.put('\x5a');
  }
  std::string rejected;
  EXPECT_FALSE(cache.Get("w", "seed 1", {64}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("checksum mismatch"));
  std::filesystem::resize_file(path, size - 10);
  rejected.clear();
  EXPECT_FALSE(cache.Get("w", "seed 1", {64}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("not " + std::to_string(size)));
  std::ofstream(path, std::ios::trunc) << "junk";
  rejected.clear();
  EXPECT_FALSE(cache.Get("w", "seed 1", {64}, &rejected).has_value());
  EXPECT_THAT(rejected, HasSubstr("not a moex weight cache entry"));
  // A good entry replaces the bad one.
  ASSERT_TRUE(cache.Put("w", "seed 1", Values({64}, 0)).ok());
  EXPECT_TRUE(cache.Get("w", "seed 1", {64}, &rejected).has_value());
}

TEST_F(WeightCacheTest, RefusesWhatIsNotItsOwnDirectory) {
  const std::string file = (root_ / "file").string();
  std::ofstream(file) << "x";
  EXPECT_THAT(std::string(WeightCache::Open(file).status().message()), HasSubstr("is not a directory"));
  const std::string link = (root_ / "link").string();
  std::filesystem::create_directory(root_ / "target");
  std::filesystem::create_directory_symlink(root_ / "target", link);
  EXPECT_THAT(std::string(WeightCache::Open(link).status().message()), HasSubstr("symbolic link"));
  if (geteuid() == 0) {  // only root can give a directory away
    std::filesystem::create_directory(root_ / "theirs");
    ASSERT_EQ(chown((root_ / "theirs").c_str(), 65534, 65534), 0);
    absl::Status theirs = WeightCache::Open((root_ / "theirs").string()).status();
    EXPECT_EQ(theirs.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(theirs.message()), HasSubstr("belongs to uid 65534"));
  }
  std::filesystem::remove_all(Dir());
  WeightCache gone = *WeightCache::Open(Dir());
  std::filesystem::remove_all(Dir());  // the directory vanished under it
  absl::Status put = gone.Put("w", "seed 1", Values({4}, 0));
  EXPECT_THAT(std::string(put.message()), HasSubstr("cannot write the weight cache entry"));
  EXPECT_THAT(std::string(put.message()), HasSubstr(Dir()));
}

TEST_F(WeightCacheTest, ALayerLoadsOnlyWhatTheCacheLacks) {
  const MoeLayerSpec spec = Spec();
  WeightCache cache = *WeightCache::Open(Dir());
  const std::vector<int64_t> mine = {1, 4, 6};
  absl::StatusOr<MoeWeights> plain = LoadMoeWeights(spec, nullptr, 7, mine);
  ASSERT_TRUE(plain.ok()) << plain.status();

  WeightLoadReport first;
  absl::StatusOr<MoeWeights> filled = LoadMoeWeights(spec, nullptr, 7, mine, &cache, &first);
  ASSERT_TRUE(filled.ok()) << filled.status();
  EXPECT_EQ(first.experts_loaded, 3);
  EXPECT_EQ(first.experts_from_cache, 0);
  EXPECT_EQ(first.put_error, "");
  ExpectSame(*plain, *filled);

  // Expert 4's entries are lost (as with a host that died) and one tensor of
  // expert 6 is corrupt: those are loaded again, the rest read back.
  const MoeWeightNames names = WeightNamesFor(spec);
  for (const char* p : {"gate", "up", "down"}) std::filesystem::remove(cache.PathFor(names.Expert(4, p)));
  std::ofstream(cache.PathFor(names.Expert(6, "down")), std::ios::trunc) << "junk";
  WeightLoadReport second;
  absl::StatusOr<MoeWeights> again = LoadMoeWeights(spec, nullptr, 7, mine, &cache, &second);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(second.experts_from_cache, 1);
  EXPECT_EQ(second.experts_loaded, 2);
  EXPECT_EQ(second.tensors_loaded, 4);
  ASSERT_EQ(second.rejected.size(), 1u);
  EXPECT_THAT(second.rejected[0], HasSubstr("experts.6.down_proj"));
  ExpectSame(*plain, *again);

  // Another seed is another source: nothing is read back.
  WeightLoadReport other;
  absl::StatusOr<MoeWeights> reseeded = LoadMoeWeights(spec, nullptr, 8, mine, &cache, &other);
  ASSERT_TRUE(reseeded.ok());
  EXPECT_EQ(other.tensors_from_cache, 0);
  ExpectSame(*LoadMoeWeights(spec, nullptr, 8, mine), *reseeded);
}

// Experts held in FP8 are cached as their FP8 bytes and scales, read back
// as a mapping of the entry, with the same values; an entry of another
// dtype is another entry.
TEST_F(WeightCacheTest, QuantisedExpertsAreCachedInTheirStoredDtype) {
  const MoeLayerSpec spec = Spec();
  WeightCache cache = *WeightCache::Open(Dir());
  const std::vector<int64_t> mine = {0, 3};
  const WeightLoadOptions fp8{.random_format = WeightFormat::kFP8Block};
  WeightLoadReport first, second, as_f32;
  absl::StatusOr<MoeWeights> made = LoadMoeWeights(spec, nullptr, 7, mine, &cache, &first, fp8);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->expert_format, WeightFormat::kFP8Block);
  EXPECT_EQ(made->expert_bytes(), 2 * ExpertBytes(spec, WeightFormat::kFP8Block));
  absl::StatusOr<MoeWeights> read = LoadMoeWeights(spec, nullptr, 7, mine, &cache, &second, fp8);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(second.experts_from_cache, 2);
  EXPECT_EQ(second.rejected.size(), 0u);
  ExpectSame(*made, *read);
  // The same seed in f32 is another source: loaded, never the fp8 entry.
  absl::StatusOr<MoeWeights> f32 = LoadMoeWeights(spec, nullptr, 7, mine, &cache, &as_f32);
  ASSERT_TRUE(f32.ok());
  EXPECT_EQ(as_f32.experts_from_cache, 0);
  EXPECT_EQ(f32->expert_format, WeightFormat::kF32);
}

TEST_F(WeightCacheTest, AMigratedExpertIsCachedAsALoadedOneWouldBe) {
  const MoeLayerSpec spec = Spec();
  WeightCache cache = *WeightCache::Open(Dir());
  // Expert 5 reached this host by migration: no rank here loaded it.
  MoeWeights moved = *LoadMoeWeights(spec, nullptr, 3, {5});
  const MoeWeightNames names = WeightNamesFor(spec);
  EXPECT_FALSE(std::filesystem::exists(cache.PathFor(names.Expert(5, "up"))));
  ASSERT_TRUE(CacheExpert(spec, nullptr, 3, 5, moved.experts.at(5), cache).ok());
  const auto written = std::filesystem::last_write_time(cache.PathFor(names.Expert(5, "up")));
  // Held already: not written again.
  ASSERT_TRUE(CacheExpert(spec, nullptr, 3, 5, moved.experts.at(5), cache).ok());
  EXPECT_EQ(std::filesystem::last_write_time(cache.PathFor(names.Expert(5, "up"))), written);
  WeightLoadReport report;
  absl::StatusOr<MoeWeights> relaunched = LoadMoeWeights(spec, nullptr, 3, {5}, &cache, &report);
  ASSERT_TRUE(relaunched.ok());
  EXPECT_EQ(report.experts_from_cache, 1);
  EXPECT_EQ(report.rejected.size(), 0u);
  EXPECT_EQ(relaunched->experts.at(5).down.ToTensor().values, moved.experts.at(5).down.ToTensor().values);
  // Another seed's expert 5 is not taken for it.
  EXPECT_FALSE(cache.Holds(names.Expert(5, "up"), "seed 4", {spec.expert_width, spec.hidden}));
}

TEST_F(WeightCacheTest, ARewrittenCheckpointIsReadAgain) {
  const MoeLayerSpec spec = Spec();
  const std::vector<int64_t> all = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::string file = (root_ / "layer.safetensors").string();
  ASSERT_TRUE(SaveMoeWeights(spec, *LoadMoeWeights(spec, nullptr, 1, all), file, model::StorageDtype::kBF16).ok());
  WeightCache cache = *WeightCache::Open(Dir());
  {
    model::Checkpoint checkpoint = *model::Checkpoint::Open(file);
    WeightLoadReport first, second;
    ASSERT_TRUE(LoadMoeWeights(spec, &checkpoint, 0, {2, 3}, &cache, &first).ok());
    EXPECT_EQ(first.experts_loaded, 2);
    absl::StatusOr<MoeWeights> back = LoadMoeWeights(spec, &checkpoint, 0, {2, 3}, &cache, &second);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(second.experts_from_cache, 2);
    ExpectSame(*LoadMoeWeights(spec, &checkpoint, 0, {2, 3}), *back);
  }
  // The same path, new weights (written and renamed into place).
  ASSERT_TRUE(SaveMoeWeights(spec, *LoadMoeWeights(spec, nullptr, 2, all), file, model::StorageDtype::kBF16).ok());
  model::Checkpoint rewritten = *model::Checkpoint::Open(file);
  WeightLoadReport third;
  absl::StatusOr<MoeWeights> fresh = LoadMoeWeights(spec, &rewritten, 0, {2, 3}, &cache, &third);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(third.experts_from_cache, 0);
  EXPECT_EQ(third.experts_loaded, 2);
  EXPECT_FALSE(third.rejected.empty());
  EXPECT_THAT(third.rejected[0], HasSubstr("another source"));
  ExpectSame(*LoadMoeWeights(spec, &rewritten, 0, {2, 3}), *fresh);
}

}  // namespace
}  // namespace moex::ep
