// ExpertFfn against each activation's formula written out here in double:
// SiLU (and DeepSeek-V4's clamp), gpt-oss's clamped SwiGLU with biases, and
// Nemotron-H's relu^2, in F32 and in a format dequantised by tiles.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "moex/kernels/expert_ffn.h"

namespace moex::kernels {
namespace {

using model::ExpertActivation;
using model::ExpertMlpSpec;

Tensor Random(int64_t rows, int64_t cols, uint32_t seed, float scale) {
  Tensor t({rows, cols});
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (float& v : t.values) v = dist(gen);
  return t;
}

std::vector<float> RandomVector(int64_t n, uint32_t seed) { return Random(1, n, seed, 0.5f).values; }

// One token through the MLP, from the formulas.
std::vector<double> Formula(const ExpertMlpSpec& mlp, const Tensor& gate, const Tensor& up, const Tensor& down,
                            const std::vector<float>& bg, const std::vector<float>& bu, const std::vector<float>& bd,
                            const float* x) {
  const int64_t F = up.dim(0), H = up.dim(1);
  std::vector<double> h(F);
  const double limit = mlp.swiglu_limit;
  for (int64_t f = 0; f < F; ++f) {
    double g = bg.empty() ? 0 : bg[f], u = bu.empty() ? 0 : bu[f];
    for (int64_t i = 0; i < H; ++i) {
      if (mlp.gated()) g += static_cast<double>(gate.values[f * H + i]) * x[i];
      u += static_cast<double>(up.values[f * H + i]) * x[i];
    }
    if (mlp.activation == ExpertActivation::kRelu2) {
      h[f] = u > 0 ? u * u : 0.0;
    } else if (mlp.activation == ExpertActivation::kSwigluOai) {
      g = std::min(g, limit);
      u = std::max(-limit, std::min(u, limit));
      h[f] = (u + 1) * g / (1 + std::exp(-mlp.swiglu_alpha * g));
    } else {
      if (limit > 0) {
        g = std::min(g, limit);
        u = std::max(-limit, std::min(u, limit));
      }
      h[f] = g / (1 + std::exp(-g)) * u;
    }
  }
  std::vector<double> y(H);
  for (int64_t i = 0; i < H; ++i) {
    y[i] = bd.empty() ? 0 : bd[i];
    for (int64_t f = 0; f < F; ++f) y[i] += static_cast<double>(down.values[i * F + f]) * h[f];
  }
  return y;
}

struct Case {
  const char* name;
  ExpertMlpSpec mlp;
  bool biases;
  WeightFormat format;
};

class ExpertFfnTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertFfnTest, MatchesTheFormula) {
  const Case& c = GetParam();
  const int64_t H = 64, F = 96, n = 5;  // F > one 64-row tile
  // Weights large enough that the clamps of the clamped activations bite.
  Tensor gate = Random(F, H, 1, 0.4f), up = Random(F, H, 2, 0.4f), down = Random(H, F, 3, 0.2f);
  Tensor x = Random(n, H, 4, 1.0f);
  std::vector<float> bg, bu, bd;
  if (c.biases) bg = RandomVector(F, 5), bu = RandomVector(F, 6), bd = RandomVector(H, 7);
  auto stored = [&](const Tensor& t) {
    if (c.format == WeightFormat::kF32) return StoredMatrix::FromTensor(t);
    return *StoredMatrix::Quantize(t, c.format);
  };
  const StoredMatrix g = stored(gate), u = stored(up), d = stored(down);
  // The formula runs on the weights as stored (dequantised), so only the
  // MLP's arithmetic is compared.
  const Tensor gq = g.ToTensor(), uq = u.ToTensor(), dq = d.ToTensor();
  ExpertWeightsView view{.gate = c.mlp.gated() ? &g : nullptr,
                         .up = &u,
                         .down = &d,
                         .gate_bias = bg.empty() ? nullptr : bg.data(),
                         .up_bias = bu.empty() ? nullptr : bu.data(),
                         .down_bias = bd.empty() ? nullptr : bd.data(),
                         .hidden = H,
                         .width = F,
                         .mlp = c.mlp};
  std::vector<float> workspace(ExpertFfnWorkspace(n, F, H)), y(n * H);
  ExpertFfn(view, x.data(), n, workspace.data(), y.data());
  int clamped = 0;
  for (int64_t t = 0; t < n; ++t) {
    const std::vector<double> want = Formula(c.mlp, gq, uq, dq, bg, bu, bd, x.row(t));
    for (int64_t i = 0; i < H; ++i) {
      EXPECT_NEAR(y[t * H + i], want[i], 1e-4 * std::max(1.0, std::fabs(want[i]))) << "token " << t << " dim " << i;
    }
  }
  // The clamp is exercised: some pre-activation exceeds the limit.
  if (c.mlp.swiglu_limit > 0) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t f = 0; f < F; ++f) {
        double a = 0;
        for (int64_t i = 0; i < H; ++i) a += static_cast<double>(gq.values[f * H + i]) * x.row(t)[i];
        clamped += std::fabs(a) > c.mlp.swiglu_limit ? 1 : 0;
      }
    }
    EXPECT_GT(clamped, 0);
  }
}

ExpertMlpSpec Mlp(ExpertActivation activation, double limit) {
  ExpertMlpSpec mlp;
  mlp.activation = activation;
  mlp.swiglu_limit = limit;
  return mlp;
}

INSTANTIATE_TEST_SUITE_P(
    Activations, ExpertFfnTest,
    ::testing::Values(Case{"silu_f32", Mlp(ExpertActivation::kSilu, 0), false, WeightFormat::kF32},
                      Case{"silu_clamped_bf16", Mlp(ExpertActivation::kSilu, 1.0), false, WeightFormat::kBF16},
                      Case{"swiglu_oai_biases_f32", Mlp(ExpertActivation::kSwigluOai, 1.0), true, WeightFormat::kF32},
                      Case{"swiglu_oai_biases_mxfp4", Mlp(ExpertActivation::kSwigluOai, 1.0), true,
                           WeightFormat::kMXFP4},
                      Case{"relu2_f32", Mlp(ExpertActivation::kRelu2, 0), false, WeightFormat::kF32},
                      Case{"relu2_fp8", Mlp(ExpertActivation::kRelu2, 0), false, WeightFormat::kFP8Block}),
    [](const ::testing::TestParamInfo<Case>& param_info) { return std::string(param_info.param.name); });

}  // namespace
}  // namespace moex::kernels
