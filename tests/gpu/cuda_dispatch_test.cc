// The dispatch's kernels on the device against their host versions: the
// layout (ep::GetDispatchLayout) and the FP8 rows (kernels/fp8_rows.h).
#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gpu_test_util.h"
#include "gtest/gtest.h"
#include "moex/ep/dispatch.h"
#include "moex/kernels/cuda/moe_kernels.h"
#include "moex/kernels/fp8_rows.h"
#include "moex/placement/placement.h"

namespace moex::kernels::cuda {
namespace {

using testing::Device;
using testing::Random;

// The dispatch layout on the device is the host's (ep::GetDispatchLayout):
// slots (replicas chosen by global token index), ranks, counts.
TEST(DispatchLayoutTest, TheHostsLayout) {
  SKIP_WITHOUT_GPU();
  const int experts = 64, world = 8, T = 1000, k = 6;
  const int64_t first_token = 12345;
  const placement::Placement placement = *placement::Placement::Contiguous(experts, world, /*redundant=*/16);
  std::vector<int32_t> offsets = {0}, slots, slot_rank;
  for (int e = 0; e < experts; ++e) {
    for (int64_t s : placement.expert_slots(e)) slots.push_back(static_cast<int32_t>(s));
    offsets.push_back(static_cast<int32_t>(slots.size()));
  }
  for (int64_t s = 0; s < placement.num_slots(); ++s) slot_rank.push_back(placement.slot_rank(s));
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> expert(0, experts - 1);
  std::vector<int32_t> topk(static_cast<size_t>(T) * k);
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int32_t e;
      do {
        e = expert(rng);
      } while (std::find(&topk[t * k], &topk[t * k + j], e) != &topk[t * k + j]);
      topk[t * k + j] = e;
    }
  }
  const ep::DispatchLayout want = ep::GetDispatchLayout(placement, topk.data(), T, k, first_token);
  Device<int32_t> d_topk(topk), d_offsets(offsets), d_slots(slots), d_rank(slot_rank);
  Device<int32_t> topk_slot(topk.size()), per_rank(world), per_slot(slots.size());
  Device<uint8_t> in_rank(static_cast<size_t>(T) * world);
  ASSERT_TRUE(GetDispatchLayout({.topk_idx = d_topk.p, .num_tokens = T, .top_k = k, .first_token = first_token,
                                 .expert_slot_offsets = d_offsets.p, .expert_slots = d_slots.p,
                                 .num_experts = experts, .slot_rank = d_rank.p,
                                 .num_slots = static_cast<int>(slots.size()), .world_size = world,
                                 .topk_slot = topk_slot.p, .is_token_in_rank = in_rank.p,
                                 .num_tokens_per_rank = per_rank.p, .num_tokens_per_slot = per_slot.p},
                                nullptr)
                  .ok());
  EXPECT_EQ(topk_slot.Get(), std::vector<int32_t>(want.topk_slot.begin(), want.topk_slot.end()));
  EXPECT_EQ(in_rank.Get(), want.is_token_in_rank);
  EXPECT_EQ(per_rank.Get(), std::vector<int32_t>(want.num_tokens_per_rank.begin(), want.num_tokens_per_rank.end()));
  EXPECT_EQ(per_slot.Get(),
            std::vector<int32_t>(want.num_tokens_per_expert.begin(), want.num_tokens_per_expert.end()));
}

TEST(DispatchLayoutTest, RefusesWhatItCannotLayOut) {
  EXPECT_THAT(std::string(GetDispatchLayout({.num_tokens = 4, .top_k = 17}, nullptr).message()),
              ::testing::HasSubstr("top-k must be 1 to 16"));
  EXPECT_THAT(std::string(GetDispatchLayout({.num_tokens = 4, .top_k = 2, .num_experts = 8, .num_slots = 8,
                                             .world_size = 2000},
                                            nullptr)
                              .message()),
              ::testing::HasSubstr("need an expert, a slot and 1 to 1024 ranks"));
}

// FP8 rows for dispatch: the GPU writes the CPU's bytes and scales
// (kernels/fp8_rows.h), bf16 input as its fp32 value; reading back gives
// the CPU's floats.
TEST(QuantizeRowsFp8Test, TheCpusBytesAndScales) {
  SKIP_WITHOUT_GPU();
  for (const int hidden : {7168, 2048, 200, 1}) {
    SCOPED_TRACE(::testing::Message() << "hidden " << hidden);
    const int rows = 37, blocks = static_cast<int>(kernels::Fp8RowScales(hidden));
    std::vector<float> x = Random(static_cast<size_t>(rows) * hidden, 13, 6.0f);
    x[3] = 1e-9f;   // rounds to zero
    x[4] = -1e-9f;  // to +0 as well
    if (hidden > 300) x[hidden + 7] = 1000.0f;  // one large value in a block
    std::vector<uint8_t> want_q(x.size());
    std::vector<float> want_scales(static_cast<size_t>(rows) * blocks), want_back(x.size());
    kernels::QuantizeRowsFp8(x.data(), rows, hidden, want_q.data(), want_scales.data());
    for (int r = 0; r < rows; ++r) {
      kernels::DequantizeRowFp8(&want_q[static_cast<size_t>(r) * hidden], &want_scales[static_cast<size_t>(r) * blocks],
                                hidden, &want_back[static_cast<size_t>(r) * hidden]);
    }
    Device<float> dx(x);
    Device<uint8_t> q(x.size());
    Device<float> scales(want_scales.size()), back(x.size());
    ASSERT_TRUE(QuantizeRowsFp8({.x = dx.p, .rows = rows, .hidden = hidden, .q = q.p, .scales = scales.p}, nullptr).ok());
    ASSERT_TRUE(DequantizeRowsFp8(q.p, scales.p, rows, hidden, Dtype::kF32, back.p, nullptr).ok());
    EXPECT_EQ(scales.Get(), want_scales);
    EXPECT_EQ(q.Get(), want_q);
    EXPECT_EQ(back.Get(), want_back);
  }
}

TEST(QuantizeRowsFp8Test, RefusesMissingBuffers) {
  EXPECT_THAT(std::string(QuantizeRowsFp8({.rows = 2, .hidden = 4}, nullptr).message()),
              ::testing::HasSubstr("2 rows of 4 values need x, q and scales"));
}

}  // namespace
}  // namespace moex::kernels::cuda
