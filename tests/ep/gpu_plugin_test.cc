// The GPU plugin is checked before its factory is called (issue #21 item 7):
// a plugin of another build, or one that predates versioned plugins, is
// refused naming both builds; one of this build is called. The plugins are
// fakes (tests/ep/fake_gpu_plugin.cc): nothing here needs a GPU.
#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/build_info.h"
#include "moex/ep/gpu_layer.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;

absl::Status LoadFrom(const char* path) {
  setenv("MOEX_GPU_PLUGIN", path, 1);
  GpuLayerArgs args;
  args.rank = 3;
  absl::StatusOr<std::unique_ptr<Layer>> layer = LoadGpuLayer(args);
  unsetenv("MOEX_GPU_PLUGIN");
  return layer.status();
}

TEST(GpuPluginTest, AnotherBuildIsRefusedNamingBoth) {
  absl::Status status = LoadFrom(FAKE_PLUGIN_OTHER);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("rank 3: the GPU plugin " FAKE_PLUGIN_OTHER " is moex 0.0.0-fake (build "
                                          "0.0.0+deadbeef0000+000000000000, plugin ABI 2) and this is moex "));
  EXPECT_THAT(status.message(), HasSubstr(std::string("(build ") + build::kBuildId));
  EXPECT_THAT(status.message(), HasSubstr("only a plugin of the same build may load"));
}

TEST(GpuPluginTest, APluginWithoutInfoIsRefused) {
  absl::Status status = LoadFrom(FAKE_PLUGIN_OLD);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("has no moex_gpu_plugin_info: it predates versioned plugins"));
  EXPECT_THAT(status.message(), HasSubstr(build::kBuildId));
}

TEST(GpuPluginTest, ThisBuildsPluginIsCalled) {
  absl::Status status = LoadFrom(FAKE_PLUGIN_SAME);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("its factory ran"));
}

TEST(GpuPluginTest, InfoIsReadOnlyWithinTheSizeItSays) {
  GpuPluginInfo truncated;
  truncated.size = 4;  // an info struct of a future, or broken, plugin: only `size` is there
  truncated.abi_version = kGpuPluginAbiVersion;
  truncated.build_id = build::kBuildId;
  absl::Status status = CheckGpuPlugin(&truncated, "p.so", 0);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("is moex ? (build ?, plugin ABI 0)"));
}

}  // namespace
}  // namespace moex::ep
