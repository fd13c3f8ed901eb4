#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "gpu_test_util.h"
#include "moex/core/tensor.h"
#include "moex/kernels/cuda/moe_kernels.h"
#include "moex/kernels/router.h"

namespace moex::kernels::cuda {
namespace {

using testing::Device;
using testing::Random;


struct RouteCase {
  const char* name;
  int tokens, experts, top_k;
  Scoring scoring;
  bool correction_bias, logit_bias;
  int groups, topk_groups;
  bool renormalize;
  float scale;
};

// gtest prints a parameter by its name, not as a byte dump.
void PrintTo(const RouteCase& c, std::ostream* os) { *os << c.name; }

class RouteTest : public ::testing::TestWithParam<RouteCase> {};

// The GPU routes every token to the same experts as the CPU router, with
// the same weights (fp32 rounding aside).
TEST_P(RouteTest, MatchesTheCpuRouter) {
  SKIP_WITHOUT_GPU();
  const RouteCase& c = GetParam();
  std::vector<float> logits = Random(static_cast<size_t>(c.tokens) * c.experts, 7, 4.0f);
  std::vector<float> bias = Random(c.experts, 9, 0.1f), logit_bias = Random(c.experts, 10, 2.0f);
  // The CPU layer adds the logit bias to its logits before Route.
  std::vector<float> biased = logits;
  for (size_t i = 0; c.logit_bias && i < biased.size(); ++i) biased[i] += logit_bias[i % c.experts];
  RouteParams cpu;
  cpu.spec.scoring = c.scoring == Scoring::kSoftmax ? "softmax" : c.scoring == Scoring::kSigmoid ? "sigmoid" : "sqrtsoftplus";
  cpu.spec.num_groups = c.groups;
  cpu.spec.topk_groups = c.topk_groups;
  cpu.spec.norm_topk_prob = c.renormalize;
  cpu.spec.routed_scaling_factor = c.scale;
  cpu.num_experts = c.experts;
  cpu.top_k = c.top_k;
  cpu.correction_bias = c.correction_bias ? bias.data() : nullptr;
  std::vector<int32_t> want_idx(static_cast<size_t>(c.tokens) * c.top_k);
  std::vector<float> want_w(want_idx.size()), scratch(2 * static_cast<size_t>(c.experts));
  Route(cpu, biased.data(), c.tokens, want_idx.data(), want_w.data(), scratch.data());

  Device<float> d_logits(logits), d_bias(bias), d_logit_bias(logit_bias), d_w(want_w.size());
  Device<int32_t> d_idx(want_idx.size());
  RouteArgs a;
  a.logits = d_logits.p;
  a.num_tokens = c.tokens, a.num_experts = c.experts, a.top_k = c.top_k;
  a.scoring = c.scoring;
  a.bias = c.correction_bias ? d_bias.p : nullptr;
  a.logit_bias = c.logit_bias ? d_logit_bias.p : nullptr;
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
    ::testing::Values(RouteCase{"softmax_top8_of_64", 257, 64, 8, Scoring::kSoftmax, false, false, 1, 1, true, 1.0f},
                      RouteCase{"softmax_top2_of_8", 100, 8, 2, Scoring::kSoftmax, false, false, 1, 1, false, 1.0f},
                      RouteCase{"dsv3_sigmoid_grouped", 129, 256, 8, Scoring::kSigmoid, true, false, 8, 4, true, 2.5f},
                      RouteCase{"dsv2_softmax_grouped", 64, 160, 6, Scoring::kSoftmax, false, false, 8, 3, false, 16.0f},
                      RouteCase{"top8_of_512", 33, 512, 8, Scoring::kSigmoid, true, false, 1, 1, true, 1.0f},
                      // DeepSeek-V4: sqrtsoftplus with a correction bias.
                      RouteCase{"dsv4_sqrtsoftplus", 131, 256, 6, Scoring::kSqrtSoftplus, true, false, 1, 1, true, 1.5f},
                      RouteCase{"sqrtsoftplus_grouped", 64, 64, 4, Scoring::kSqrtSoftplus, true, false, 8, 4, false, 1.0f},
                      // No correction bias, no groups: chosen by the logit.
                      RouteCase{"sqrtsoftplus_by_logit", 77, 48, 8, Scoring::kSqrtSoftplus, false, false, 1, 1, true, 1.0f},
                      RouteCase{"sigmoid_by_logit", 77, 48, 1, Scoring::kSigmoid, false, true, 1, 1, false, 1.0f},
                      // gpt-oss: a logit bias, softmax.
                      RouteCase{"gpt_oss_logit_bias", 90, 32, 4, Scoring::kSoftmax, false, true, 1, 1, true, 1.0f},
                      RouteCase{"sqrtsoftplus_logit_bias", 50, 64, 6, Scoring::kSqrtSoftplus, true, true, 1, 1, true, 1.0f}),
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

// sqrt(softplus(x)) far out on both sides, where a naive log(1 + e^x)
// overflows (x = 90) or loses everything (x = -90): top-8 of 8 unscaled
// weighs every expert by its score.
TEST(RouteTest, SqrtSoftplusMatchesTheFormula) {
  SKIP_WITHOUT_GPU();
  const std::vector<float> logits = {-90.0f, -20.0f, -1.5f, -1e-3f, 0.0f, 2.0f, 20.0f, 90.0f};
  Device<float> d_logits(logits), d_w(logits.size());
  Device<int32_t> d_idx(logits.size());
  RouteArgs a;
  a.logits = d_logits.p, a.num_tokens = 1, a.num_experts = 8, a.top_k = 8, a.scoring = Scoring::kSqrtSoftplus;
  a.topk_idx = d_idx.p, a.topk_weights = d_w.p;
  ASSERT_TRUE(Route(a, nullptr).ok());
  std::vector<int32_t> idx = d_idx.Get();
  std::vector<float> w = d_w.Get();
  for (int j = 0; j < 8; ++j) {
    EXPECT_EQ(idx[j], 7 - j);  // by the logit, largest first
    const double x = logits[idx[j]];
    const double want = std::sqrt(x > 30 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)));
    EXPECT_NEAR(w[j], want, 2e-6 * std::max(1.0, want)) << "logit " << x;
  }
}

struct ActivationCase {
  const char* name;
  Activation kind;
  Dtype dtype;
  float limit;
  bool bias;
};

void PrintTo(const ActivationCase& c, std::ostream* os) { *os << c.name; }

class ActivationTest : public ::testing::TestWithParam<ActivationCase> {};

// What kernels/cpu/expert_ffn.cc computes, in double.
double ActivationReference(Activation kind, double g, double u, double limit, double alpha) {
  switch (kind) {
    case Activation::kSilu:
      if (limit > 0) {
        g = std::min(g, limit);
        u = std::clamp(u, -limit, limit);
      }
      return g / (1 + std::exp(-g)) * u;
    case Activation::kSwigluOai:
      g = std::min(g, limit);
      u = std::clamp(u, -limit, limit);
      return (u + 1) * g / (1 + std::exp(-alpha * g));
    case Activation::kRelu2:
      return std::max(u, 0.0) * std::max(u, 0.0);
  }
  return 0;
}

// Inputs out to +-12, beyond the limits (5 and 7), so the clamps bite;
// with biases, rows take their expert's by the offsets (expert 1 idle).
TEST_P(ActivationTest, MatchesTheCpuFormula) {
  SKIP_WITHOUT_GPU();
  const ActivationCase& c = GetParam();
  const int R = 37, F = 50, E = 4, in_width = c.kind == Activation::kRelu2 ? F : 2 * F;
  const std::vector<int32_t> offsets = {0, 5, 5, 20, R};
  const float alpha = 1.702f;
  std::vector<float> in = Random(static_cast<size_t>(R) * in_width, 13, 12.0f);
  std::vector<float> bias = Random(static_cast<size_t>(E) * in_width, 14, 3.0f);
  const bool bf16 = c.dtype == Dtype::kBF16;
  std::vector<uint16_t> raw(in.size() * (bf16 ? 1 : 2));
  for (size_t i = 0; bf16 && i < in.size(); ++i) {
    raw[i] = FloatToBf16(in[i]);
    in[i] = Bf16ToFloat(raw[i]);  // what the device holds
  }
  if (!bf16) std::memcpy(raw.data(), in.data(), in.size() * 4);
  Device<uint16_t> d_in(raw), d_out(static_cast<size_t>(R) * F * (bf16 ? 1 : 2));
  Device<float> d_bias(bias);
  Device<int32_t> d_off(offsets);
  ActivationArgs a;
  a.in = d_in.p, a.rows = R, a.width = F, a.dtype = c.dtype, a.kind = c.kind, a.limit = c.limit, a.alpha = alpha;
  if (c.bias) {
    a.bias = d_bias.p, a.expert_offsets = d_off.p, a.num_experts = E;
  }
  a.out = d_out.p;
  absl::Status ran = Activate(a, nullptr);
  ASSERT_TRUE(ran.ok()) << ran;
  std::vector<uint16_t> out_raw = d_out.Get();
  int clamped = 0;
  for (int r = 0; r < R; ++r) {
    int e = 0;
    while (r >= offsets[e + 1]) ++e;
    for (int f = 0; f < F; ++f) {
      const size_t at = static_cast<size_t>(r) * in_width;
      double g = c.kind == Activation::kRelu2 ? 0.0 : in[at + f], u = in[at + in_width - F + f];
      if (c.bias) {
        // fp32 adds, as on the device.
        if (c.kind != Activation::kRelu2) g = static_cast<float>(in[at + f] + bias[static_cast<size_t>(e) * in_width + f]);
        u = static_cast<float>(in[at + in_width - F + f] + bias[static_cast<size_t>(e) * in_width + in_width - F + f]);
      }
      if (c.limit > 0 && (g > c.limit || std::fabs(u) > c.limit)) ++clamped;
      const double want = ActivationReference(c.kind, g, u, c.limit, alpha);
      const size_t i = static_cast<size_t>(r) * F + f;
      float got;
      if (bf16) {
        got = Bf16ToFloat(out_raw[i]);
      } else {
        std::memcpy(&got, &out_raw[2 * i], 4);
      }
      EXPECT_NEAR(got, want, (bf16 ? 8e-3 : 1e-5) * std::max(1.0, std::fabs(want))) << "row " << r << " column " << f;
    }
  }
  if (c.limit > 0) {
    EXPECT_GT(clamped, R * F / 4) << "the inputs hardly reach the clamp";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, ActivationTest,
    ::testing::Values(ActivationCase{"silu_f32", Activation::kSilu, Dtype::kF32, 0.0f, false},
                      ActivationCase{"dsv4_clamped_silu_f32", Activation::kSilu, Dtype::kF32, 5.0f, false},
                      ActivationCase{"dsv4_clamped_silu_bf16", Activation::kSilu, Dtype::kBF16, 5.0f, false},
                      ActivationCase{"gpt_oss_f32", Activation::kSwigluOai, Dtype::kF32, 7.0f, false},
                      ActivationCase{"gpt_oss_bf16_biases", Activation::kSwigluOai, Dtype::kBF16, 7.0f, true},
                      ActivationCase{"gpt_oss_f32_biases", Activation::kSwigluOai, Dtype::kF32, 7.0f, true},
                      ActivationCase{"relu2_f32", Activation::kRelu2, Dtype::kF32, 0.0f, false},
                      ActivationCase{"relu2_bf16_biases", Activation::kRelu2, Dtype::kBF16, 0.0f, true}),
    [](const ::testing::TestParamInfo<ActivationCase>& param_info) { return std::string(param_info.param.name); });

// The down bias: each row plus its expert's, idle experts passed over.
TEST(AddExpertBiasTest, EachRowGetsItsExpertsBias) {
  SKIP_WITHOUT_GPU();
  const int R = 33, H = 40, E = 5;
  const std::vector<int32_t> offsets = {0, 7, 7, 19, 20, R};
  std::vector<float> rows = Random(static_cast<size_t>(R) * H, 15), bias = Random(static_cast<size_t>(E) * H, 16);
  Device<float> d_rows(rows), d_bias(bias);
  Device<int32_t> d_off(offsets);
  ASSERT_TRUE(AddExpertBias(d_rows.p, R, H, Dtype::kF32, d_bias.p, d_off.p, E, nullptr).ok());
  std::vector<float> got = d_rows.Get();
  for (int r = 0; r < R; ++r) {
    int e = 0;
    while (r >= offsets[e + 1]) ++e;
    for (int h = 0; h < H; ++h) {
      const size_t i = static_cast<size_t>(r) * H + h;
      EXPECT_EQ(got[i], rows[i] + bias[static_cast<size_t>(e) * H + h]) << "row " << r << " (expert " << e << ")";
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
  // Both ways of running the experts give the same products.
  for (GemmMode mode : {GemmMode::kGroupedCall, GemmMode::kPerExpert}) {
    SCOPED_TRACE(GemmModeName(mode));
    absl::StatusOr<GroupedGemm> gemm = GroupedGemm::Create(E, mode);
    ASSERT_TRUE(gemm.ok()) << gemm.status();
    ASSERT_EQ(cudaMemset(d_out.p, 0, d_out.n * sizeof(float)), cudaSuccess);
    absl::Status ran = gemm->Run(d_in.p, w_ptrs.data(), d_off.p, E, N, Kd, Dtype::kF32, d_out.p, nullptr);
    ASSERT_TRUE(ran.ok()) << ran;
    EXPECT_EQ(gemm->last_mode(), mode);
    std::vector<float> out = d_out.Get();
    for (int e = 0; e < E; ++e) {
      for (int r = offsets[e]; r < offsets[e + 1]; ++r) {
        for (int n = 0; n < N; ++n) {
          double want = 0;
          for (int k = 0; k < Kd; ++k) {
            want += double(in[static_cast<size_t>(r) * Kd + k]) * w[e][static_cast<size_t>(n) * Kd + k];
          }
          EXPECT_NEAR(out[static_cast<size_t>(r) * N + n], want, 1e-3) << "expert " << e << " row " << r;
        }
      }
    }
    EXPECT_EQ(gemm->rows_per_expert(), (std::vector<int32_t>{7, 0, 12, 1, 13}));
  }
  // kAuto: 33 rows over 4 active experts is below kPerExpertMinRows each.
  absl::StatusOr<GroupedGemm> automatic = GroupedGemm::Create(E);
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  ASSERT_TRUE(automatic->Run(d_in.p, w_ptrs.data(), d_off.p, E, N, Kd, Dtype::kF32, d_out.p, nullptr).ok());
  EXPECT_EQ(automatic->last_mode(), GemmMode::kGroupedCall);
}

struct LayerCase {
  const char* name;
  Dtype dtype;
  int hidden;  // 100: rows not a multiple of 16 bytes, the scalar paths
};

void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

class LayerTest : public ::testing::TestWithParam<LayerCase> {};

// Route, permute, gate/up, SwiGLU, down and the weighted un-permute chained
// as moex_bench_gpu chains them, against the same layer on the host in
// double precision (bf16 rounding of the inputs and weights included).
TEST_P(LayerTest, ChainMatchesAHostReference) {
  SKIP_WITHOUT_GPU();
  const LayerCase c = GetParam();
  const int T = 70, E = 6, K = 2, F = 24, H = c.hidden, pairs = T * K;
  const bool bf16 = c.dtype == Dtype::kBF16;
  std::vector<float> x = Random(static_cast<size_t>(T) * H, 21), logits = Random(static_cast<size_t>(T) * E, 22, 2.0f);
  std::vector<std::vector<float>> w1, w2;
  for (int e = 0; e < E; ++e) {
    w1.push_back(Random(static_cast<size_t>(2 * F) * H, 300 + e, 0.2f));
    w2.push_back(Random(static_cast<size_t>(H) * F, 400 + e, 0.3f));
  }
  // What the device holds: bf16 bits or fp32, and the host's view of it.
  auto upload = [&](std::vector<float>& v) {
    if (bf16) {
      std::vector<uint16_t> bits(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        bits[i] = FloatToBf16(v[i]);
        v[i] = Bf16ToFloat(bits[i]);
      }
      return std::make_unique<Device<uint16_t>>(bits);
    }
    std::vector<uint16_t> raw(v.size() * 2);
    std::memcpy(raw.data(), v.data(), v.size() * 4);
    return std::make_unique<Device<uint16_t>>(raw);
  };
  auto d_x = upload(x);
  std::vector<std::unique_ptr<Device<uint16_t>>> d_w1, d_w2;
  std::vector<const void*> p_w1, p_w2;
  for (int e = 0; e < E; ++e) {
    d_w1.push_back(upload(w1[e]));
    d_w2.push_back(upload(w2[e]));
    p_w1.push_back(d_w1.back()->p);
    p_w2.push_back(d_w2.back()->p);
  }
  const size_t elem = bf16 ? 2 : 4;
  Device<float> d_logits(logits), d_w(static_cast<size_t>(pairs));
  Device<int32_t> d_idx(static_cast<size_t>(pairs)), d_row(static_cast<size_t>(pairs)), d_off(E + 1);
  Device<char> d_perm(pairs * H * elem), d_gu(pairs * 2 * F * elem), d_act(pairs * F * elem), d_down(pairs * H * elem),
      d_y(static_cast<size_t>(T) * H * 4);  // fp32 out
  const size_t ws = PermuteWorkspaceBytes(pairs, E);
  Device<char> d_ws(ws);

  RouteArgs r;
  r.logits = d_logits.p, r.num_tokens = T, r.num_experts = E, r.top_k = K, r.renormalize = true;
  r.topk_idx = d_idx.p, r.topk_weights = d_w.p;
  ASSERT_TRUE(Route(r, nullptr).ok());
  PermuteArgs p;
  p.x = d_x->p, p.topk_idx = d_idx.p, p.num_tokens = T, p.top_k = K, p.hidden = H, p.num_experts = E;
  p.dtype = c.dtype, p.permuted = d_perm.p, p.row_of_pair = d_row.p, p.expert_offsets = d_off.p;
  p.workspace = d_ws.p, p.workspace_bytes = ws;
  ASSERT_TRUE(Permute(p, nullptr).ok());
  absl::StatusOr<GroupedGemm> gemm = GroupedGemm::Create(E);
  ASSERT_TRUE(gemm.ok()) << gemm.status();
  absl::Status ran = gemm->Run(d_perm.p, p_w1.data(), d_off.p, E, 2 * F, H, c.dtype, d_gu.p, nullptr);
  ASSERT_TRUE(ran.ok()) << ran;
  ASSERT_TRUE(SwiGlu(d_gu.p, pairs, F, c.dtype, d_act.p, nullptr).ok());
  ran = gemm->Run(d_act.p, p_w2.data(), d_off.p, E, H, F, c.dtype, d_down.p, nullptr);
  ASSERT_TRUE(ran.ok()) << ran;
  UnpermuteArgs u;
  u.rows = d_down.p, u.row_of_pair = d_row.p, u.topk_weights = d_w.p, u.num_tokens = T, u.top_k = K, u.hidden = H;
  u.dtype = c.dtype, u.out_dtype = Dtype::kF32, u.y = d_y.p;
  ASSERT_TRUE(Unpermute(u, nullptr).ok());

  std::vector<int32_t> idx = d_idx.Get();
  std::vector<float> weights = d_w.Get();
  std::vector<char> y_raw = d_y.Get();
  std::vector<float> y(static_cast<size_t>(T) * H);
  std::memcpy(y.data(), y_raw.data(), y.size() * 4);
  double max_abs = 0, max_err = 0;
  for (int t = 0; t < T; ++t) {
    std::vector<double> want(H, 0.0);
    for (int j = 0; j < K; ++j) {
      const int e = idx[static_cast<size_t>(t) * K + j];
      ASSERT_GE(e, 0);
      ASSERT_LT(e, E);
      std::vector<double> act(F);
      for (int f = 0; f < F; ++f) {
        double g = 0, up = 0;
        for (int h = 0; h < H; ++h) {
          g += double(x[static_cast<size_t>(t) * H + h]) * w1[e][static_cast<size_t>(f) * H + h];
          up += double(x[static_cast<size_t>(t) * H + h]) * w1[e][static_cast<size_t>(F + f) * H + h];
        }
        act[f] = g / (1 + std::exp(-g)) * up;
      }
      for (int h = 0; h < H; ++h) {
        double o = 0;
        for (int f = 0; f < F; ++f) o += act[f] * w2[e][static_cast<size_t>(h) * F + f];
        want[h] += weights[static_cast<size_t>(t) * K + j] * o;
      }
    }
    for (int h = 0; h < H; ++h) {
      max_abs = std::max(max_abs, std::fabs(want[h]));
      max_err = std::max(max_err, std::fabs(want[h] - y[static_cast<size_t>(t) * H + h]));
    }
  }
  // bf16 keeps 8 significant bits in the intermediates: 2^-8 relative each.
  const double tolerance = (bf16 ? 3e-2 : 1e-4) * std::max(max_abs, 1e-3);
  EXPECT_LT(max_err, tolerance) << "largest |y| " << max_abs;
  EXPECT_GT(max_abs, 1e-3) << "the layer computed (almost) nothing";
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LayerTest,
                         ::testing::Values(LayerCase{"bf16_vectorised", Dtype::kBF16, 128},
                                           LayerCase{"bf16_scalar", Dtype::kBF16, 100},
                                           LayerCase{"fp32_scalar", Dtype::kF32, 100},
                                           LayerCase{"fp32_vectorised", Dtype::kF32, 64}),
                         [](const ::testing::TestParamInfo<LayerCase>& param_info) { return std::string(param_info.param.name); });

TEST(FillUniformTest, SameSeedSameValuesInRange) {
  SKIP_WITHOUT_GPU();
  Device<float> a(size_t{4096}), b(size_t{4096});
  ASSERT_TRUE(FillUniform(a.p, a.n, Dtype::kF32, -2.0f, 3.0f, 42, nullptr).ok());
  ASSERT_TRUE(FillUniform(b.p, b.n, Dtype::kF32, -2.0f, 3.0f, 42, nullptr).ok());
  std::vector<float> va = a.Get(), vb = b.Get();
  EXPECT_EQ(va, vb);
  double mean = 0;
  for (float v : va) {
    ASSERT_GE(v, -2.0f);
    ASSERT_LT(v, 3.0f);
    mean += v / va.size();
  }
  EXPECT_NEAR(mean, 0.5, 0.1);
}

TEST(ActivationArgsTest, RefusesABiasWithoutOffsets) {
  // Checked before anything touches a device: runs everywhere.
  const float bias = 0;
  ActivationArgs a;
  a.rows = 4, a.width = 8, a.bias = &bias;
  EXPECT_THAT(std::string(Activate(a, nullptr).message()), ::testing::HasSubstr("offsets"));
  a.bias = nullptr, a.width = 0;
  EXPECT_THAT(std::string(Activate(a, nullptr).message()), ::testing::HasSubstr("bad shape"));
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
