// The arithmetic of the family references (family_models*.cc): plain
// loops in double, written for reading, not speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "family_models.h"

namespace moex::testing::math {

inline constexpr int64_t kTokens = 37, kHidden = 64, kExperts = 8, kWidth = 32;

// ---- Writing ------------------------------------------------------------

struct Rng {
  explicit Rng(const std::string& name) : gen(std::hash<std::string>{}(name)) {}
  std::vector<float> Uniform(int64_t n, double scale) {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& f : v) f = static_cast<float>(dist(gen) * scale);
    return v;
  }
  std::mt19937_64 gen;
};

inline int64_t Count(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

inline void PutF32(FamilyModel* m, Rng& rng, const std::string& name, std::vector<int64_t> shape, double scale) {
  m->tensors[name] = {"F32", shape, rng.Uniform(Count(shape), scale), {}};
}

inline FamilyModel Begin(const std::string& family, nlohmann::json config, int64_t layer) {
  FamilyModel m;
  m.config = std::move(config);
  m.layer = layer;
  m.tokens = kTokens;
  m.hidden = kHidden;
  Rng rng(family + " input");
  m.x = rng.Uniform(kTokens * kHidden, 1.0);
  return m;
}

// ---- The reference's arithmetic, in double --------------------------------

using Vec = std::vector<double>;

inline const std::vector<float>& Values(const FamilyModel& m, const std::string& name) {
  return m.tensors.at(name).f32;
}

inline Vec Row(const FamilyModel& m, int64_t t) {
  return Vec(m.x.begin() + t * m.hidden, m.x.begin() + (t + 1) * m.hidden);
}

// W [rows, cols] (from `offset` in `w`) times v [cols]: nn.Linear's x W^T.
inline Vec Linear(const std::vector<float>& w, int64_t offset, int64_t rows, int64_t cols, const Vec& v) {
  Vec out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r] += static_cast<double>(w[offset + r * cols + c]) * v[c];
  }
  return out;
}

// v [rows] times W [rows, cols]: x @ W for weights stored [in, out].
inline Vec Times(const Vec& v, const std::vector<float>& w, int64_t offset, int64_t rows, int64_t cols) {
  Vec out(cols, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c] += v[r] * static_cast<double>(w[offset + r * cols + c]);
  }
  return out;
}

inline double Silu(double g) { return g / (1.0 + std::exp(-g)); }
inline double Sigmoid(double g) { return 1.0 / (1.0 + std::exp(-g)); }

inline Vec Softmax(const Vec& logits) {
  const double top = *std::max_element(logits.begin(), logits.end());
  Vec p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] - top);
  for (double& v : p) v /= sum;
  return p;
}

// torch.topk: the k largest, largest first.
inline std::vector<int64_t> TopK(const Vec& score, int64_t k) {
  std::vector<int64_t> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[a] > score[b]; });
  idx.resize(k);
  return idx;
}

inline void AddScaled(Vec* acc, const Vec& v, double w) {
  for (size_t i = 0; i < v.size(); ++i) (*acc)[i] += w * v[i];
}

// A gated SiLU MLP with nn.Linear weights gate, up [F, H] and down [H, F].
inline Vec SiluMlp(const FamilyModel& m, const std::string& gate, const std::string& up, const std::string& down,
            int64_t width, const Vec& x) {
  const Vec g = Linear(Values(m, gate), 0, width, m.hidden, x);
  const Vec u = Linear(Values(m, up), 0, width, m.hidden, x);
  Vec h(width);
  for (int64_t f = 0; f < width; ++f) h[f] = Silu(g[f]) * u[f];
  return Linear(Values(m, down), 0, m.hidden, width, h);
}

inline std::vector<double> Flatten(const std::vector<Vec>& rows) {
  std::vector<double> out;
  for (const Vec& r : rows) out.insert(out.end(), r.begin(), r.end());
  return out;
}

inline nlohmann::json Decoder(const std::string& model_type, int64_t layers) {
  return {{"model_type", model_type}, {"vocab_size", 256},          {"hidden_size", kHidden},
          {"num_hidden_layers", layers}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"head_dim", 16}};
}

}  // namespace moex::testing::math
