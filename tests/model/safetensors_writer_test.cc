// SafetensorsWriter: a header from declarations, bytes appended in pieces,
// checked against what was declared, and nothing left behind on failure.
#include "moex/model/safetensors_writer.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/model/safetensors.h"

namespace moex::model {
namespace {

using ::testing::HasSubstr;

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_st_writer_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  int Entries() const {
    int n = 0;
    for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir_)) ++n;
    return n;
  }
  std::filesystem::path dir_;
};

TEST_F(SafetensorsWriterTest, WritesTensorsInPiecesThatCheckpointReads) {
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint8_t q[5] = {9, 8, 7, 6, 5};
  auto writer = SafetensorsWriter::Create(
      Path("x.safetensors"), {{"a", "F32", {2, 3}}, {"empty", "F32", {0}}, {"q", "F8_E4M3", {5}}}, {{"format", "pt"}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Append("a", a, 8).ok());
  ASSERT_TRUE((*writer)->Append("a", reinterpret_cast<const char*>(a) + 8, 16).ok());
  ASSERT_TRUE((*writer)->Append("q", q, 5).ok());  // "empty" has no bytes to give
  EXPECT_FALSE(std::filesystem::exists(Path("x.safetensors")));  // only the temporary, until Finish
  ASSERT_TRUE((*writer)->Finish().ok());
  EXPECT_EQ((*writer)->data_bytes(), 29);
  EXPECT_EQ((*writer)->file_bytes(), static_cast<int64_t>(std::filesystem::file_size(Path("x.safetensors"))));
  EXPECT_EQ(Entries(), 1);

  absl::StatusOr<Checkpoint> checkpoint = Checkpoint::Open(Path("x.safetensors"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(checkpoint->Read("a")->values, std::vector<float>(a, a + 6));
  TensorInfo info = *checkpoint->Info("q");
  EXPECT_EQ(info.dtype, "F8_E4M3");
  EXPECT_EQ(info.end - info.begin, 5);
  EXPECT_EQ(info.begin % 8, 0);  // a's 24 bytes after an 8-aligned header
  std::ifstream in(Path("x.safetensors"), std::ios::binary);
  in.seekg(info.begin);
  char got[5];
  in.read(got, 5);
  EXPECT_EQ(std::memcmp(got, q, 5), 0);
  uint64_t length = 0;
  in.seekg(0);
  in.read(reinterpret_cast<char*>(&length), 8);
  EXPECT_EQ(length % 8, 0u);
}

TEST_F(SafetensorsWriterTest, RefusesBytesOutOfOrderOrBeyondTheDeclaration) {
  auto writer = SafetensorsWriter::Create(Path("x.safetensors"), {{"a", "BF16", {2}}, {"b", "U8", {3}}});
  ASSERT_TRUE(writer.ok());
  const char bytes[8] = {};
  EXPECT_THAT(std::string((*writer)->Append("b", bytes, 3).message()), HasSubstr("'b' is written where 'a'"));
  EXPECT_THAT(std::string((*writer)->Append("a", bytes, 5).message()), HasSubstr("4 bytes; 5 were given"));
  ASSERT_TRUE((*writer)->Append("a", bytes, 4).ok());
  EXPECT_THAT(std::string((*writer)->Finish().message()), HasSubstr("tensor 'b' (declared #1 of 2) has 0 of its 3"));
  ASSERT_TRUE((*writer)->Append("b", bytes, 3).ok());
  EXPECT_THAT(std::string((*writer)->Append("c", bytes, 1).message()), HasSubstr("after all 2 declared"));
  EXPECT_TRUE((*writer)->Finish().ok());
}

TEST_F(SafetensorsWriterTest, AnUnfinishedWriterLeavesNothing) {
  {
    auto writer = SafetensorsWriter::Create(Path("x.safetensors"), {{"a", "F32", {4}}});
    ASSERT_TRUE(writer.ok());
    EXPECT_EQ(Entries(), 1);  // the temporary file
  }
  EXPECT_EQ(Entries(), 0);
}

TEST_F(SafetensorsWriterTest, BadDeclarationsAreErrorsNamingTheTensor) {
  EXPECT_THAT(std::string(SafetensorsWriter::Create(Path("x"), {{"w", "F4", {2}}}).status().message()),
              HasSubstr("tensor 'w': dtype 'F4'"));
  EXPECT_THAT(std::string(SafetensorsWriter::Create(Path("x"), {{"w", "F32", {2}}, {"w", "F32", {1}}}).status().message()),
              HasSubstr("'w' is empty, reserved or repeated"));
  EXPECT_THAT(std::string(SafetensorsWriter::Create(Path("no/such/dir/x"), {}).status().message()),
              HasSubstr("cannot write"));
  EXPECT_EQ(Entries(), 0);
}

TEST_F(SafetensorsWriterTest, WriteFileAtomicallyReplacesTheFile) {
  ASSERT_TRUE(WriteFileAtomically(Path("a.json"), "{}").ok());
  ASSERT_TRUE(WriteFileAtomically(Path("a.json"), "{\"x\": 1}\n").ok());
  std::ifstream in(Path("a.json"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "{\"x\": 1}\n");
  EXPECT_EQ(Entries(), 1);
}

}  // namespace
}  // namespace moex::model
