// safetensors: round trips, sharded checkpoints, and files that lie.
#include "moex/model/safetensors.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::model {
namespace {

using ::testing::HasSubstr;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_safetensors_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  // A file with the given JSON header and `data_bytes` bytes of data.
  std::string Raw(const std::string& name, const std::string& header, size_t data_bytes,
                  uint64_t claimed_length = 0) {
    std::ofstream out(Path(name), std::ios::binary);
    uint64_t length = claimed_length ? claimed_length : header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header << std::string(data_bytes, '\0');
    return Path(name);
  }

  static std::string ErrorOf(const absl::StatusOr<Checkpoint>& opened) {
    return opened.ok() ? "" : std::string(opened.status().message());
  }

  std::filesystem::path dir_;
};

TEST_F(SafetensorsTest, RoundTripsFp32AndBf16) {
  Tensor a({2, 3}), b({4});
  for (int i = 0; i < 6; ++i) a.values[i] = 0.5f * i - 1.0f;  // exact in bf16
  for (int i = 0; i < 4; ++i) b.values[i] = 1.0f / (i + 1);
  ASSERT_TRUE(WriteSafetensors(Path("f32.safetensors"), {{"a", &a}, {"b", &b}}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("bf16.safetensors"), {{"a", &a}, {"b", &b}}, StorageDtype::kBF16).ok());
  Checkpoint f32 = *Checkpoint::Open(Path("f32.safetensors"));
  EXPECT_EQ(f32.Read("a")->values, a.values);
  EXPECT_EQ(f32.Read("b")->values, b.values);
  EXPECT_EQ(f32.Info("a")->dtype, "F32");
  Checkpoint bf16 = *Checkpoint::Open(Path("bf16.safetensors"));
  EXPECT_EQ(bf16.Read("a", {2, 3})->values, a.values);
  EXPECT_NEAR(bf16.Read("b")->values[2], 1.0f / 3, 1.0f / 256);
  // No temporary file is left behind.
  int files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir_)) files += entry.is_regular_file();
  EXPECT_EQ(files, 2);
}

TEST_F(SafetensorsTest, ShapeAndNameErrorsNameTheTensor) {
  Tensor a({2, 3});
  ASSERT_TRUE(WriteSafetensors(Path("m.safetensors"), {{"w", &a}}).ok());
  Checkpoint file = *Checkpoint::Open(Path("m.safetensors"));
  EXPECT_THAT(std::string(file.Read("w", {3, 2}).status().message()),
              HasSubstr("tensor 'w' has shape [2, 3], the model needs [3, 2]"));
  EXPECT_THAT(std::string(file.Read("v").status().message()), HasSubstr("has no tensor 'v'"));
}

TEST_F(SafetensorsTest, ShardedIndexAndFolder) {
  Tensor a({2}), b({3});
  a.values = {1, 2};
  b.values = {3, 4, 5};
  std::filesystem::create_directories(dir_ / "ckpt");
  ASSERT_TRUE(WriteSafetensors(Path("ckpt/s1.safetensors"), {{"a", &a}}).ok());
  ASSERT_TRUE(WriteSafetensors(Path("ckpt/s2.safetensors"), {{"b", &b}}).ok());
  std::ofstream(Path("ckpt/model.safetensors.index.json"))
      << R"({"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})";
  absl::StatusOr<Checkpoint> folder = Checkpoint::Open(Path("ckpt"));
  ASSERT_TRUE(folder.ok()) << folder.status();
  EXPECT_EQ(folder->Read("b")->values, b.values);
  EXPECT_EQ(Checkpoint::Open(Path("ckpt/model.safetensors.index.json"))->Read("a")->values, a.values);
  // An index that points at a shard without the tensor.
  std::ofstream(Path("ckpt/model.safetensors.index.json"), std::ios::trunc)
      << R"({"weight_map": {"a": "s2.safetensors"}})";
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Path("ckpt"))), HasSubstr("maps 'a' to"));
  std::ofstream(Path("ckpt/model.safetensors.index.json"), std::ios::trunc)
      << R"({"weight_map": {"a": "gone.safetensors"}})";
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Path("ckpt"))), HasSubstr("gone.safetensors"));
}

TEST_F(SafetensorsTest, HostileFilesAreRefused) {
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Path("missing.safetensors"))), HasSubstr("cannot open"));
  std::ofstream(Path("tiny.safetensors")) << "abc";
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Path("tiny.safetensors"))), HasSubstr("not a safetensors file"));
  // A header length beyond the file.
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("long.safetensors", "{}", 0, 1 << 20))),
              HasSubstr("header length 1048576 does not fit"));
  // Not JSON.
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("garbage.safetensors", "{nope", 0))), HasSubstr("malformed JSON"));
  // Offsets past the data (a truncated file).
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("cut.safetensors",
                                           R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8))),
              HasSubstr("fall outside the file's 8 data bytes (truncated file?)"));
  // Offsets that disagree with the shape.
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("lie.safetensors",
                                           R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}})", 16))),
              HasSubstr("[4] F32 needs 16 bytes, data_offsets give 8"));
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("dtype.safetensors",
                                           R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}})", 2))),
              HasSubstr("unknown dtype 'Q4'"));
  EXPECT_THAT(ErrorOf(Checkpoint::Open(Raw("shape.safetensors",
                                           R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4))),
              HasSubstr("bad dimension"));
  // A dtype moex can size but not compute with.
  Checkpoint i16 = *Checkpoint::Open(
      Raw("i16.safetensors", R"({"w": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]}})", 4));
  EXPECT_THAT(std::string(i16.Read("w").status().message()), HasSubstr("is I16; moex reads F32, BF16 and F16"));
}

TEST_F(SafetensorsTest, UnwritablePathIsAnError) {
  Tensor a({1});
  absl::Status status = WriteSafetensors("/nonexistent-dir/x.safetensors", {{"a", &a}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot write"));
}

}  // namespace
}  // namespace moex::model
