// FP8 between hosts (DispatchDtype::kFp8): the rows every path delivers,
// and the bytes a row takes on the wire. Which dtype the ranks agree on is
// with the other choices in dispatch_test.cc.
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dispatch_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;
using testing::CombinedOutput;
using testing::DispatchCase;
using testing::HostDirectories;
using testing::HostSplit;
using testing::OnEveryRank;

// FP8 between hosts: on every path and split, a dispatcher on kFp8 gives
// bit for bit what the same path on kFp32 gives when handed the rows as
// their fp8 form reads back. So every row (the own rank's, shared memory's
// and the network's alike) reaches the experts as that read-back, and the
// network carries nothing else of it.

class DispatchFp8Test : public ::testing::TestWithParam<std::tuple<DispatchCase, HostSplit>> {};

TEST_P(DispatchFp8Test, EveryRowArrivesAsItsFp8FormReadsBack) {
  auto [c, split] = GetParam();
  c.hidden = 200;  // two scale blocks, the second one short
  const int world = static_cast<int>(c.tokens.size());
  HostDirectories hosts(split);
  const std::vector<std::pair<std::string, std::function<DispatchOptions(int)>>> paths = {
      {"shared memory", [](int) { return DispatchOptions{.path = DispatchPath::kSharedMemory}; }},
      {"all-to-all-v", [](int) { return DispatchOptions{.path = DispatchPath::kAllToAllV}; }},
      {"per peer", [&](int r) { return hosts.options(r, DispatchPath::kPerPeer); }},
      {"hierarchical", [&](int r) { return hosts.options(r, DispatchPath::kHierarchical); }},
  };
  for (const auto& [name, options_of] : paths) {
    std::vector<std::optional<Tensor>> fp8(world), read_back(world);
    for (const bool wire_fp8 : {true, false}) {
      OnEveryRank(world, [&](int r, transport::Transport& t) {
        DispatchOptions options = options_of(r);
        options.dtype = wire_fp8 ? DispatchDtype::kFp8 : DispatchDtype::kFp32;
        absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(t, options, Deadline::InSeconds(30));
        ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
        (wire_fp8 ? fp8 : read_back)[r] = CombinedOutput(t, *dispatcher, c, 3, /*read_back_fp8=*/!wire_fp8);
      });
    }
    for (int r = 0; r < world; ++r) {
      ASSERT_TRUE(fp8[r] && read_back[r]) << name << ", rank " << r;
      const std::vector<float>& want = read_back[r]->values;
      const std::vector<float>& got = fp8[r]->values;
      ASSERT_EQ(got.size(), want.size());
      EXPECT_TRUE(want.empty() || std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0)
          << name << ", rank " << r << ": fp8 on the wire is not the read-back rows on fp32";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DispatchFp8Test, ::testing::ValuesIn(testing::CasesOnEveryHostSplit()),
                         [](const ::testing::TestParamInfo<std::tuple<DispatchCase, HostSplit>>& param_info) {
                           return std::get<0>(param_info.param).name + "_hosts" + std::get<1>(param_info.param).name;
                         });

TEST(DispatchFp8Test, WireRowBytes) {
  // DeepSeek-V3's hidden size: 7168 values and 56 scales, 0.516x of bf16.
  EXPECT_EQ(WireRowBytes(DispatchDtype::kFp8, 7168), 7168 + 56 * 4);
  EXPECT_EQ(WireRowBytes(DispatchDtype::kFp32, 7168), 7168 * 4);
  // Values padded to 4 bytes; a short last block has a scale of its own.
  EXPECT_EQ(WireRowBytes(DispatchDtype::kFp8, 130), 132 + 2 * 4);
  EXPECT_EQ(std::string(DispatchDtypeName(DispatchDtype::kFp8)), "fp8");
  EXPECT_EQ(*ParseDispatchDtype("fp32"), DispatchDtype::kFp32);
  EXPECT_THAT(std::string(ParseDispatchDtype("bf16").status().message()),
              HasSubstr("--dispatch-dtype is 'bf16'; known: fp32, fp8"));
}

}  // namespace
}  // namespace moex::ep
