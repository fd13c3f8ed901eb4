#include <cuda_runtime_api.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/kernels/cuda/moe_kernels.h"
#include "moex/kernels/router.h"

namespace moex::kernels::cuda {
namespace {

#define SKIP_WITHOUT_GPU()                                          \
  do {                                                              \
    absl::Status gpu = DeviceAvailable();                           \
    if (!gpu.ok()) GTEST_SKIP() << gpu.message() << ": GPU test skipped"; \
  } while (0)

// A device buffer holding a copy of `host`, read back with Get().
template <typename T>
struct Device {
  explicit Device(const std::vector<T>& host) : n(host.size()) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit Device(size_t count) : n(count) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)), cudaSuccess);
  }
  ~Device() { cudaFree(p); }
  std::vector<T> Get() const {
    std::vector<T> host(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (n) {
      EXPECT_EQ(cudaMemcpy(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    }
    return host;
  }
  T* p = nullptr;
  size_t n;
};

std::vector<float> Random(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

struct RouteCase {
  const char* name;
  int tokens, experts, top_k;
  bool sigmoid;
  int groups, topk_groups;
  bool renormalize;
  float scale;
};

class RouteTest : public ::testing::TestWithParam<RouteCase> {};

// The GPU routes every token to the same experts as the CPU router, with
// the same weights (fp32 rounding aside).
TEST_P(RouteTest, MatchesTheCpuRouter) {
  SKIP_WITHOUT_GPU();
  const RouteCase& c = GetParam();
  std::vector<float> logits = Random(static_cast<size_t>(c.tokens) * c.experts, 7, 4.0f);
  std::vector<float> bias = Random(c.experts, 9, 0.1f);
  RouteParams cpu;
  cpu.spec.scoring = c.sigmoid ? "sigmoid" : "softmax";
  cpu.spec.num_groups = c.groups;
  cpu.spec.topk_groups = c.topk_groups;
  cpu.spec.norm_topk_prob = c.renormalize;
  cpu.spec.routed_scaling_factor = c.scale;
  cpu.num_experts = c.experts;
  cpu.top_k = c.top_k;
  cpu.correction_bias = c.sigmoid ? bias.data() : nullptr;
  std::vector<int32_t> want_idx(static_cast<size_t>(c.tokens) * c.top_k);
  std::vector<float> want_w(want_idx.size()), scratch(2 * static_cast<size_t>(c.experts));
  Route(cpu, logits.data(), c.tokens, want_idx.data(), want_w.data(), scratch.data());

  Device<float> d_logits(logits), d_bias(bias), d_w(want_w.size());
  Device<int32_t> d_idx(want_idx.size());
  RouteArgs a;
  a.logits = d_logits.p;
  a.num_tokens = c.tokens, a.num_experts = c.experts, a.top_k = c.top_k;
  a.sigmoid = c.sigmoid;
  a.bias = c.sigmoid ? d_bias.p : nullptr;
  a.groups = c.groups, a.topk_groups = c.topk_groups;
  a.renormalize = c.renormalize;
  a.scale = c.scale;
  a.topk_idx = d_idx.p, a.topk_weights = d_w.p;
  ASSERT_TRUE(Route(a, nullptr).ok());
  std::vector<int32_t> got_idx = d_idx.Get();
  std::vector<float> got_w = d_w.Get();
  for (size_t i = 0; i < want_idx.size(); ++i) {
    ASSERT_EQ(got_idx[i], want_idx[i]) << c.name << ": token " << i / c.top_k << " choice " << i % c.top_k;
    EXPECT_NEAR(got_w[i], want_w[i], 1e-5f * std::max(1.0f, std::fabs(want_w[i])));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Routers, RouteTest,
    ::testing::Values(RouteCase{"softmax_top8_of_64", 257, 64, 8, false, 1, 1, true, 1.0f},
                      RouteCase{"softmax_top2_of_8", 100, 8, 2, false, 1, 1, false, 1.0f},
                      RouteCase{"dsv3_sigmoid_grouped", 129, 256, 8, true, 8, 4, true, 2.5f},
                      RouteCase{"dsv2_softmax_grouped", 64, 160, 6, false, 8, 3, false, 16.0f},
                      RouteCase{"top8_of_512", 33, 512, 8, true, 1, 1, true, 1.0f}),
    [](const ::testing::TestParamInfo<RouteCase>& param_info) { return std::string(param_info.param.name); });

// Permute, then un-permute with weights: each token's weighted sum of its
// own rows, and rows laid out expert by expert in token order.
TEST(PermuteTest, ExpertMajorStableAndInvertible) {
  SKIP_WITHOUT_GPU();
  const int T = 300, K = 4, H = 96, E = 16;
  std::vector<float> x = Random(static_cast<size_t>(T) * H, 3);
  std::vector<int32_t> idx(static_cast<size_t>(T) * K);
  std::mt19937_64 rng(5);
  for (int t = 0; t < T; ++t) {
    std::vector<int32_t> all(E);
    for (int e = 0; e < E; ++e) all[e] = e;
    std::shuffle(all.begin(), all.end(), rng);
    std::copy(all.begin(), all.begin() + K, idx.begin() + static_cast<size_t>(t) * K);
  }
  std::vector<float> w = Random(idx.size(), 11);
  Device<float> d_x(x), d_w(w), d_perm(static_cast<size_t>(T) * K * H), d_y(static_cast<size_t>(T) * H);
  Device<int32_t> d_idx(idx), d_row(idx.size()), d_off(E + 1);
  const size_t ws = PermuteWorkspaceBytes(T * K, E);
  Device<char> d_ws(ws);
  PermuteArgs p;
  p.x = d_x.p, p.topk_idx = d_idx.p, p.num_tokens = T, p.top_k = K, p.hidden = H, p.num_experts = E;
  p.permuted = d_perm.p, p.row_of_pair = d_row.p, p.expert_offsets = d_off.p;
  p.workspace = d_ws.p, p.workspace_bytes = ws;
  ASSERT_TRUE(Permute(p, nullptr).ok());
  std::vector<int32_t> rows = d_row.Get(), offsets = d_off.Get();
  std::vector<float> perm = d_perm.Get();
  // Offsets count each expert's pairs; rows of one expert follow token order.
  std::vector<int> count(E, 0);
  for (int32_t e : idx) ++count[e];
  for (int e = 0; e < E; ++e) EXPECT_EQ(offsets[e + 1] - offsets[e], count[e]) << "expert " << e;
  std::vector<int> last(E, -1);
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      const int e = idx[static_cast<size_t>(t) * K + j], r = rows[static_cast<size_t>(t) * K + j];
      ASSERT_GE(r, offsets[e]);
      ASSERT_LT(r, offsets[e + 1]);
      EXPECT_GT(r, last[e]);
      last[e] = r;
      EXPECT_EQ(std::memcmp(&perm[static_cast<size_t>(r) * H], &x[static_cast<size_t>(t) * H], H * sizeof(float)), 0);
    }
  }
  UnpermuteArgs u;
  u.rows = d_perm.p, u.row_of_pair = d_row.p, u.topk_weights = d_w.p;
  u.num_tokens = T, u.top_k = K, u.hidden = H, u.y = d_y.p;
  ASSERT_TRUE(Unpermute(u, nullptr).ok());
  std::vector<float> y = d_y.Get();
  for (int t = 0; t < T; ++t) {
    float wsum = 0;
    for (int j = 0; j < K; ++j) wsum += w[static_cast<size_t>(t) * K + j];
    for (int h = 0; h < H; ++h) {
      EXPECT_NEAR(y[static_cast<size_t>(t) * H + h], wsum * x[static_cast<size_t>(t) * H + h], 1e-5f);
    }
  }
  // Too small a workspace is an error, not a write past its end.
  p.workspace_bytes = ws / 2;
  EXPECT_THAT(std::string(Permute(p, nullptr).message()), ::testing::HasSubstr("workspace"));
}

TEST(SwiGluTest, MatchesTheFormula) {
  SKIP_WITHOUT_GPU();
  const int R = 37, F = 50;
  std::vector<float> gu = Random(static_cast<size_t>(R) * 2 * F, 13, 3.0f);
  Device<float> d_gu(gu), d_out(static_cast<size_t>(R) * F);
  ASSERT_TRUE(SwiGlu(d_gu.p, R, F, Dtype::kF32, d_out.p, nullptr).ok());
  std::vector<float> out = d_out.Get();
  for (int r = 0; r < R; ++r) {
    for (int f = 0; f < F; ++f) {
      const float g = gu[static_cast<size_t>(r) * 2 * F + f], u = gu[static_cast<size_t>(r) * 2 * F + F + f];
      EXPECT_NEAR(out[static_cast<size_t>(r) * F + f], g / (1 + std::exp(-g)) * u, 1e-4f);
    }
  }
}

// Each expert's rows times its own weight matrix, idle experts included.
TEST(GroupedGemmTest, EveryExpertAgainstAPlainProduct) {
  SKIP_WITHOUT_GPU();
  const int E = 5, N = 24, Kd = 40;
  const std::vector<int32_t> offsets = {0, 7, 7, 19, 20, 33};  // expert 1 idle
  const int rows = offsets.back();
  std::vector<float> in = Random(static_cast<size_t>(rows) * Kd, 17);
  std::vector<std::vector<float>> w;
  std::vector<std::unique_ptr<Device<float>>> d_w;
  std::vector<const void*> w_ptrs;
  for (int e = 0; e < E; ++e) {
    w.push_back(Random(static_cast<size_t>(N) * Kd, 100 + e));
    d_w.push_back(std::make_unique<Device<float>>(w.back()));
    w_ptrs.push_back(d_w.back()->p);
  }
  Device<float> d_in(in), d_out(static_cast<size_t>(rows) * N);
  Device<int32_t> d_off(offsets);
  absl::StatusOr<GroupedGemm> gemm = GroupedGemm::Create(E);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  absl::Status ran = gemm->Run(d_in.p, w_ptrs.data(), d_off.p, E, N, Kd, Dtype::kF32, d_out.p, nullptr);
  ASSERT_TRUE(ran.ok()) << ran;
  std::vector<float> out = d_out.Get();
  for (int e = 0; e < E; ++e) {
    for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
      for (int n = 0; n < N; ++n) {
        double want = 0;
        for (int k = 0; k < Kd; ++k) want += double(in[static_cast<size_t>(r) * Kd + k]) * w[e][static_cast<size_t>(n) * Kd + k];
        EXPECT_NEAR(out[static_cast<size_t>(r) * N + n], want, 1e-3) << "expert " << e << " row " << r;
      }
    }
  }
  EXPECT_EQ(gemm->rows_per_expert(), (std::vector<int32_t>{7, 0, 12, 1, 13}));
}

TEST(RouteArgsTest, RefusesShapesItCannotRoute) {
  // Checked before anything touches a device: runs everywhere.
  RouteArgs a;
  a.num_tokens = 1, a.num_experts = 2048, a.top_k = 8;
  EXPECT_THAT(std::string(Route(a, nullptr).message()), ::testing::HasSubstr("[1, 1024]"));
  a.num_experts = 64, a.top_k = 9;
  EXPECT_THAT(std::string(Route(a, nullptr).message()), ::testing::HasSubstr("top-k"));
  a.top_k = 8, a.groups = 16, a.topk_groups = 1;  // 4 experts kept for top-8
  EXPECT_THAT(std::string(Route(a, nullptr).message()), ::testing::HasSubstr("groups"));
}

}  // namespace
}  // namespace moex::kernels::cuda
