// The bearer token's file (issue #19 item c): open to anyone but its owner,
// it is refused, naming the file and its mode and saying how to fix it, as
// ssh refuses such a private key (before: read and used whatever its mode).
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/credentials.h"

namespace moex::cluster {
namespace {

using ::testing::HasSubstr;

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_token_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& text, mode_t mode) {
    const std::string path = (dir_ / "token").string();
    std::ofstream(path) << text;
    EXPECT_EQ(chmod(path.c_str(), mode), 0);
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(TokenFileTest, AFileOthersMayReadIsRefusedNamingItAndItsMode) {
  for (mode_t mode : {0644, 0640, 0604, 0620}) {
    const std::string path = Write("s3cret\n", mode);
    absl::StatusOr<std::string> token = ReadTokenFile(path);
    ASSERT_FALSE(token.ok()) << "mode " << std::oct << mode << " was accepted";
    EXPECT_EQ(token.status().code(), absl::StatusCode::kPermissionDenied);
    char shown[8];
    snprintf(shown, sizeof(shown), "%04o", static_cast<unsigned>(mode));
    EXPECT_THAT(token.status().message(), HasSubstr("the token file '" + path + "' is open to others (mode " + shown));
    EXPECT_THAT(token.status().message(), HasSubstr("chmod 600 " + path));
    EXPECT_THAT(token.status().message(), ::testing::Not(HasSubstr("s3cret")));
  }
}

TEST_F(TokenFileTest, TheOwnersAloneIsReadFirstLineOnly) {
  for (mode_t mode : {0600, 0400}) {
    absl::StatusOr<std::string> token = ReadTokenFile(Write("s3cret \r\nsecond line\n", mode));
    ASSERT_TRUE(token.ok()) << token.status();
    EXPECT_EQ(*token, "s3cret");
  }
  EXPECT_EQ(*ReadTokenFile(""), "");  // no file: no token
}

TEST_F(TokenFileTest, AnEmptyOrMissingFileIsNamed) {
  const std::string empty = Write("\n", 0600);
  EXPECT_EQ(ReadTokenFile(empty).status().message(), "the token file '" + empty + "' is empty");
  const std::string missing = (dir_ / "missing").string();
  absl::StatusOr<std::string> token = ReadTokenFile(missing);
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(token.status().message(), HasSubstr("cannot read the token file '" + missing + "'"));
}

}  // namespace
}  // namespace moex::cluster
