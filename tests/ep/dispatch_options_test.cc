// DispatchOptions: the path names, MOEX_INTRANODE, `moex run --dispatch`,
// and validation that names the bad field.
#include <cstdlib>
#include <optional>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;

// Sets MOEX_INTRANODE for the scope (unset with nullptr), then restores it.
class IntranodeEnv {
 public:
  explicit IntranodeEnv(const char* value) {
    if (const char* old = std::getenv("MOEX_INTRANODE")) old_ = old;
    if (value != nullptr) setenv("MOEX_INTRANODE", value, 1);
    else unsetenv("MOEX_INTRANODE");
  }
  ~IntranodeEnv() {
    if (old_) setenv("MOEX_INTRANODE", old_->c_str(), 1);
    else unsetenv("MOEX_INTRANODE");
  }

 private:
  std::optional<std::string> old_;
};

TEST(DispatchOptionsTest, PathNames) {
  EXPECT_EQ(DispatchPathName(DispatchPath::kAuto), "auto");
  EXPECT_EQ(DispatchPathName(DispatchPath::kSharedMemory), "shared memory");
  EXPECT_EQ(DispatchPathName(DispatchPath::kAllToAllV), "all-to-all-v");
  EXPECT_EQ(DispatchPathName(DispatchPath::kPerPeer), "per peer");
  EXPECT_EQ(DispatchPathName(DispatchPath::kHierarchical), "hierarchical");
}

TEST(DispatchOptionsTest, TheEnvironmentChoosesThePath) {
  const std::pair<const char*, DispatchPath> cases[] = {{nullptr, DispatchPath::kAuto},
                                                         {"", DispatchPath::kAuto},
                                                         {"auto", DispatchPath::kAuto},
                                                         {"0", DispatchPath::kAllToAllV},
                                                         {"1", DispatchPath::kSharedMemory}};
  for (const auto& [value, path] : cases) {
    IntranodeEnv env(value);
    absl::StatusOr<DispatchOptions> options = DispatchOptions::FromEnvironment();
    ASSERT_TRUE(options.ok()) << options.status();
    EXPECT_EQ(options->path, path) << (value ? value : "(unset)");
    EXPECT_EQ(options->shared_memory.directory, "/dev/shm");
  }
  IntranodeEnv env("yes");
  EXPECT_THAT(std::string(DispatchOptions::FromEnvironment().status().message()),
              HasSubstr("MOEX_INTRANODE='yes' is not one of 0 (all-to-all-v), 1 (shared memory), auto"));
}

TEST(DispatchOptionsTest, TheDispatchFlagChoosesFlatOrHierarchical) {
  IntranodeEnv unset(nullptr);
  absl::StatusOr<DispatchOptions> options = DispatchOptions::FromEnvironment("auto");
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->path, DispatchPath::kAuto);
  EXPECT_FALSE(options->flat);
  options = DispatchOptions::FromEnvironment("flat");
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->path, DispatchPath::kAuto);
  EXPECT_TRUE(options->flat);
  options = DispatchOptions::FromEnvironment("hierarchical");
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->path, DispatchPath::kHierarchical);
  EXPECT_THAT(std::string(DispatchOptions::FromEnvironment("fast").status().message()),
              HasSubstr("--dispatch 'fast' is not one of auto, flat, hierarchical"));
  IntranodeEnv set("0");
  EXPECT_THAT(std::string(DispatchOptions::FromEnvironment("hierarchical").status().message()),
              HasSubstr("--dispatch hierarchical and MOEX_INTRANODE=0 both choose the path"));
}

TEST(DispatchOptionsTest, ValidateNamesTheBadField) {
  EXPECT_TRUE(DispatchOptions{}.Validate().ok());
  EXPECT_TRUE(DispatchOptions{.path = DispatchPath::kPerPeer}.Validate().ok());
  EXPECT_THAT(std::string(DispatchOptions{.path = static_cast<DispatchPath>(9)}.Validate().message()),
              HasSubstr("path 9 is not a path"));
  // Per peer makes segments: their options matter.
  EXPECT_THAT(std::string(DispatchOptions{.path = DispatchPath::kPerPeer, .shared_memory = {.directory = "shm"}}
                              .Validate()
                              .message()),
              HasSubstr("directory 'shm' is not an absolute path"));
  DispatchOptions relative{.shared_memory = {.directory = "shm"}};
  EXPECT_THAT(std::string(relative.Validate().message()), HasSubstr("directory 'shm' is not an absolute path"));
  DispatchOptions negative{.shared_memory = {.max_bytes = -1}};
  EXPECT_THAT(std::string(negative.Validate().message()), HasSubstr("max_bytes -1 is negative"));
  // Segment options do not matter where no segment is made.
  EXPECT_TRUE((DispatchOptions{.path = DispatchPath::kAllToAllV, .shared_memory = {.directory = "shm"}}).Validate().ok());
}

}  // namespace
}  // namespace moex::ep
