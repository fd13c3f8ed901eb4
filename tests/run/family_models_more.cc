// gpt-oss, Nemotron-H, Qwen3-Next, Qwen3.5 and DeepSeek-V4 (family_models.cc
// has the others).
#include <cmath>
#include <string>
#include <vector>

#include "family_math.h"
#include "family_models.h"

namespace moex::testing {

using namespace math;  // NOLINT: the references read as formulas

namespace {

// ---- gpt-oss ---------------------------------------------------------------
// GptOssTopKRouter: logits = x W^T + b; top-k of the logits; softmax over the
// k chosen. GptOssExperts: gate_up = x @ gate_up_proj[e] + bias (gate: even
// columns, up: odd), gate = min(gate, limit), up = clamp(up, -limit, limit),
// glu = gate * sigmoid(1.702 gate), y = ((up + 1) * glu) @ down_proj[e] + bias.
// The release stores both projections in MXFP4 as [E, out, in/32, 16] bytes
// (two e2m1 values a byte, the low nibble first) and [E, out, in/32] e8m0
// scales; transformers dequantises them to [E, out, in] and transposes.

constexpr double kFp4[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
constexpr double kSwigluLimit = 1.5;  // small, so that the clamps bite
constexpr int64_t kTopK = 2;

// A random MXFP4 tensor [E, rows, cols] and its exact values.
void PutMxfp4(FamilyModel* m, Rng& rng, const std::string& base, int64_t rows, int64_t cols, int exponent) {
  const int64_t blocks = cols / 32;
  StoredTensor values{"U8", {kExperts, rows, blocks, 16}, {}, {}};
  StoredTensor scales{"U8", {kExperts, rows, blocks}, {}, {}};
  std::uniform_int_distribution<int> nibble(0, 15), jitter(-1, 1);
  for (int64_t i = 0; i < kExperts * rows * blocks; ++i) {
    scales.u8.push_back(static_cast<uint8_t>(127 + exponent + jitter(rng.gen)));
    for (int b = 0; b < 16; ++b) values.u8.push_back(static_cast<uint8_t>(nibble(rng.gen) | nibble(rng.gen) << 4));
  }
  m->tensors[base + "_blocks"] = std::move(values);
  m->tensors[base + "_scales"] = std::move(scales);
}

// The test's own decoding: W[e] as [rows, cols] doubles.
std::vector<double> DecodeMxfp4(const FamilyModel& m, const std::string& base, int64_t e, int64_t rows, int64_t cols) {
  const std::vector<uint8_t>& blocks = m.tensors.at(base + "_blocks").u8;
  const std::vector<uint8_t>& scales = m.tensors.at(base + "_scales").u8;
  std::vector<double> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t block = (e * rows + r) * (cols / 32) + c / 32;
      const uint8_t byte = blocks[block * 16 + (c % 32) / 2];
      const int code = c % 2 == 0 ? byte & 0xf : byte >> 4;
      w[r * cols + c] = std::ldexp(kFp4[code], scales[block] - 127);
    }
  }
  return w;
}

}  // namespace

FamilyModel MakeGptOss() {
  nlohmann::json c = Decoder("gpt_oss", 2);
  c.update({{"intermediate_size", kWidth}, {"num_local_experts", kExperts}, {"experts_per_token", kTopK},
            {"num_experts_per_tok", kTopK}, {"sliding_window", 128}, {"swiglu_limit", kSwigluLimit},
            {"layer_types", {"sliding_attention", "full_attention"}},
            {"quantization_config", {{"quant_method", "mxfp4"}}}});
  FamilyModel m = Begin("gpt_oss", c, 0);
  Rng rng("gpt_oss weights");
  const std::string block = "model.layers.0.mlp.";
  PutF32(&m, rng, block + "router.weight", {kExperts, kHidden}, 0.3);
  PutF32(&m, rng, block + "router.bias", {kExperts}, 0.2);
  PutMxfp4(&m, rng, block + "experts.gate_up_proj", 2 * kWidth, kHidden, -4);
  PutF32(&m, rng, block + "experts.gate_up_proj_bias", {kExperts, 2 * kWidth}, 0.3);
  PutMxfp4(&m, rng, block + "experts.down_proj", kHidden, kWidth, -5);
  PutF32(&m, rng, block + "experts.down_proj_bias", {kExperts, kHidden}, 0.1);
  return m;
}

std::vector<double> GptOssReference(const FamilyModel& m) {
  const std::string block = "model.layers.0.mlp.";
  const auto& router_bias = Values(m, block + "router.bias");
  const auto& gate_up_bias = Values(m, block + "experts.gate_up_proj_bias");
  const auto& down_bias = Values(m, block + "experts.down_proj_bias");
  std::vector<std::vector<double>> gate_up(kExperts), down(kExperts);
  for (int64_t e = 0; e < kExperts; ++e) {
    gate_up[e] = DecodeMxfp4(m, block + "experts.gate_up_proj", e, 2 * kWidth, kHidden);
    down[e] = DecodeMxfp4(m, block + "experts.down_proj", e, kHidden, kWidth);
  }
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    Vec logits = Linear(Values(m, block + "router.weight"), 0, kExperts, m.hidden, x);
    for (int64_t e = 0; e < kExperts; ++e) logits[e] += router_bias[e];
    const std::vector<int64_t> idx = TopK(logits, kTopK);
    Vec chosen;
    for (int64_t e : idx) chosen.push_back(logits[e]);
    const Vec w = Softmax(chosen);
    Vec out(m.hidden, 0.0);
    for (size_t j = 0; j < idx.size(); ++j) {
      const int64_t e = idx[j];
      Vec h(kWidth);
      for (int64_t f = 0; f < kWidth; ++f) {
        double g = gate_up_bias[e * 2 * kWidth + 2 * f], u = gate_up_bias[e * 2 * kWidth + 2 * f + 1];
        for (int64_t c = 0; c < kHidden; ++c) {
          g += gate_up[e][(2 * f) * kHidden + c] * x[c];
          u += gate_up[e][(2 * f + 1) * kHidden + c] * x[c];
        }
        g = std::min(g, kSwigluLimit);
        u = std::clamp(u, -kSwigluLimit, kSwigluLimit);
        h[f] = (u + 1.0) * g * Sigmoid(1.702 * g);
      }
      for (int64_t o = 0; o < kHidden; ++o) {
        double sum = down_bias[e * kHidden + o];
        for (int64_t f = 0; f < kWidth; ++f) sum += down[e][o * kWidth + f] * h[f];
        out[o] += w[j] * sum;
      }
    }
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- Nemotron-H --------------------------------------------------------------
// NemotronHTopkRouter (DeepSeek-V3's): s = sigmoid(x W^T); choice = s +
// e_score_correction_bias; groups ranked by the sum of their two best
// choices, the best topk_group kept; top-k of choice within them; weights
// s (no bias), over their sum when norm_topk_prob, times
// routed_scaling_factor. Experts and the shared expert: down(relu(up x)^2).
// Layers follow hybrid_override_pattern: E is a MoE layer.

namespace {
constexpr int64_t kGroups = 4, kTopGroups = 2, kSharedWidth = 48;
constexpr double kRoutedScaling = 2.5;
}  // namespace

FamilyModel MakeNemotronH() {
  nlohmann::json c = Decoder("nemotron_h", 4);
  c.update({{"hybrid_override_pattern", "ME*E"}, {"mamba_num_heads", 8}, {"mamba_head_dim", 16},
            {"ssm_state_size", 16}, {"n_groups", 2}, {"conv_kernel", 4}, {"n_routed_experts", kExperts},
            {"num_experts_per_tok", kTopK}, {"moe_intermediate_size", kWidth}, {"n_shared_experts", 1},
            {"moe_shared_expert_intermediate_size", kSharedWidth}, {"n_group", kGroups}, {"topk_group", kTopGroups},
            {"norm_topk_prob", true}, {"routed_scaling_factor", kRoutedScaling}, {"mlp_bias", false},
            {"mlp_hidden_act", "relu2"}});
  FamilyModel m = Begin("nemotron_h", c, 1);
  Rng rng("nemotron_h weights");
  const std::string block = "backbone.layers.1.mixer.";
  PutF32(&m, rng, block + "gate.weight", {kExperts, kHidden}, 0.3);
  PutF32(&m, rng, block + "gate.e_score_correction_bias", {kExperts}, 0.1);
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = block + "experts." + std::to_string(e) + ".";
    PutF32(&m, rng, p + "up_proj.weight", {kWidth, kHidden}, 0.125);
    PutF32(&m, rng, p + "down_proj.weight", {kHidden, kWidth}, 0.18);
  }
  PutF32(&m, rng, block + "shared_experts.up_proj.weight", {kSharedWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "shared_experts.down_proj.weight", {kHidden, kSharedWidth}, 0.15);
  return m;
}

std::vector<double> NemotronHReference(const FamilyModel& m) {
  const std::string block = "backbone.layers.1.mixer.";
  const auto& bias = Values(m, block + "gate.e_score_correction_bias");
  auto relu2_mlp = [&](const std::string& prefix, int64_t width, const Vec& x) {
    Vec h = Linear(Values(m, prefix + "up_proj.weight"), 0, width, m.hidden, x);
    for (double& v : h) v = std::max(v, 0.0) * std::max(v, 0.0);
    return Linear(Values(m, prefix + "down_proj.weight"), 0, m.hidden, width, h);
  };
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    Vec s = Linear(Values(m, block + "gate.weight"), 0, kExperts, m.hidden, x);
    for (double& v : s) v = Sigmoid(v);
    Vec choice(kExperts);
    for (int64_t e = 0; e < kExperts; ++e) choice[e] = s[e] + bias[e];
    const int64_t per_group = kExperts / kGroups;
    Vec group_score(kGroups);
    for (int64_t g = 0; g < kGroups; ++g) {
      const Vec members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
      for (int64_t i : TopK(members, 2)) group_score[g] += members[i];
    }
    Vec masked(kExperts, -1e300);
    for (int64_t g : TopK(group_score, kTopGroups)) {
      for (int64_t i = 0; i < per_group; ++i) masked[g * per_group + i] = choice[g * per_group + i];
    }
    const std::vector<int64_t> idx = TopK(masked, kTopK);
    double total = 0;
    for (int64_t e : idx) total += s[e];
    Vec out = relu2_mlp(block + "shared_experts.", kSharedWidth, x);
    for (int64_t e : idx) {
      const double w = s[e] / (total + 1e-20) * kRoutedScaling;
      AddScaled(&out, relu2_mlp(block + "experts." + std::to_string(e) + ".", kWidth, x), w);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- Qwen3-Next ------------------------------------------------------------
// Qwen3NextSparseMoeBlock: softmax over all experts, top-k, renormalised
// (norm_topk_prob); plus the shared expert times sigmoid(shared_expert_gate
// x). Many experts: 64 here, top-10 (the release: 512, top-10).

namespace {
constexpr int64_t kManyExperts = 64, kTopTen = 10, kQwenShared = 48;

void PutQwenSharedExpert(FamilyModel* m, Rng& rng, const std::string& block) {
  PutF32(m, rng, block + "shared_expert.gate_proj.weight", {kQwenShared, kHidden}, 0.125);
  PutF32(m, rng, block + "shared_expert.up_proj.weight", {kQwenShared, kHidden}, 0.125);
  PutF32(m, rng, block + "shared_expert.down_proj.weight", {kHidden, kQwenShared}, 0.15);
  PutF32(m, rng, block + "shared_expert_gate.weight", {1, kHidden}, 0.2);
}

// The shared expert times sigmoid(shared_expert_gate x).
Vec QwenSharedExpert(const FamilyModel& m, const std::string& block, const Vec& x) {
  const double gate = Sigmoid(Linear(Values(m, block + "shared_expert_gate.weight"), 0, 1, m.hidden, x)[0]);
  Vec out = SiluMlp(m, block + "shared_expert.gate_proj.weight", block + "shared_expert.up_proj.weight",
                    block + "shared_expert.down_proj.weight", kQwenShared, x);
  for (double& v : out) v *= gate;
  return out;
}
}  // namespace

FamilyModel MakeQwen3Next() {
  nlohmann::json c = Decoder("qwen3_next", 4);
  c["head_dim"] = 32;
  c.update({{"intermediate_size", 96}, {"moe_intermediate_size", kWidth}, {"shared_expert_intermediate_size", kQwenShared},
            {"num_experts", kManyExperts}, {"num_experts_per_tok", kTopTen}, {"norm_topk_prob", true},
            {"decoder_sparse_step", 1}, {"mlp_only_layers", nlohmann::json::array()}, {"full_attention_interval", 4},
            {"linear_conv_kernel_dim", 4}, {"linear_key_head_dim", 16}, {"linear_value_head_dim", 16},
            {"linear_num_key_heads", 2}, {"linear_num_value_heads", 4}, {"tie_word_embeddings", false}});
  FamilyModel m = Begin("qwen3_next", c, 0);
  Rng rng("qwen3_next weights");
  const std::string block = "model.layers.0.mlp.";
  PutF32(&m, rng, block + "gate.weight", {kManyExperts, kHidden}, 0.5);
  for (int e = 0; e < kManyExperts; ++e) {
    const std::string p = block + "experts." + std::to_string(e) + ".";
    PutF32(&m, rng, p + "gate_proj.weight", {kWidth, kHidden}, 0.125);
    PutF32(&m, rng, p + "up_proj.weight", {kWidth, kHidden}, 0.125);
    PutF32(&m, rng, p + "down_proj.weight", {kHidden, kWidth}, 0.18);
  }
  PutQwenSharedExpert(&m, rng, block);
  return m;
}

std::vector<double> Qwen3NextReference(const FamilyModel& m) {
  const std::string block = "model.layers.0.mlp.";
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    const Vec p = Softmax(Linear(Values(m, block + "gate.weight"), 0, kManyExperts, m.hidden, x));
    const std::vector<int64_t> idx = TopK(p, kTopTen);
    double total = 0;
    for (int64_t e : idx) total += p[e];
    Vec out(m.hidden, 0.0);
    for (int64_t e : idx) {
      const std::string ex = block + "experts." + std::to_string(e) + ".";
      AddScaled(&out, SiluMlp(m, ex + "gate_proj.weight", ex + "up_proj.weight", ex + "down_proj.weight", kWidth, x),
                p[e] / total);
    }
    AddScaled(&out, QwenSharedExpert(m, block, x), 1.0);
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- Qwen3.5 -----------------------------------------------------------------
// The Qwen3-Next block, with the release's layout: the text model under
// text_config and model.language_model., experts stacked [out, in]:
// experts.gate_up_proj [E, 2F, H] (gate: the first F rows) and
// experts.down_proj [E, H, F].

FamilyModel MakeQwen35() {
  nlohmann::json text = MakeQwen3Next().config;
  text["model_type"] = "qwen3_5_moe_text";
  nlohmann::json c = {{"model_type", "qwen3_5_moe"}, {"text_config", text}, {"tie_word_embeddings", false}};
  FamilyModel m = Begin("qwen3_5_moe", c, 0);
  Rng rng("qwen3_5_moe weights");
  const std::string block = "model.language_model.layers.0.mlp.";
  PutF32(&m, rng, block + "gate.weight", {kManyExperts, kHidden}, 0.5);
  PutF32(&m, rng, block + "experts.gate_up_proj", {kManyExperts, 2 * kWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "experts.down_proj", {kManyExperts, kHidden, kWidth}, 0.18);
  PutQwenSharedExpert(&m, rng, block);
  return m;
}

std::vector<double> Qwen35Reference(const FamilyModel& m) {
  const std::string block = "model.language_model.layers.0.mlp.";
  const auto& gate_up = Values(m, block + "experts.gate_up_proj");
  const auto& down = Values(m, block + "experts.down_proj");
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    const Vec p = Softmax(Linear(Values(m, block + "gate.weight"), 0, kManyExperts, m.hidden, x));
    const std::vector<int64_t> idx = TopK(p, kTopTen);
    double total = 0;
    for (int64_t e : idx) total += p[e];
    Vec out(m.hidden, 0.0);
    for (int64_t e : idx) {
      const Vec gu = Linear(gate_up, e * 2 * kWidth * kHidden, 2 * kWidth, kHidden, x);
      Vec h(kWidth);
      for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(gu[f]) * gu[kWidth + f];
      AddScaled(&out, Linear(down, e * kHidden * kWidth, kHidden, kWidth, h), p[e] / total);
    }
    AddScaled(&out, QwenSharedExpert(m, block, x), 1.0);
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- DeepSeek-V4 ------------------------------------------------------------
// DeepSeek's own names (layers.L.ffn.gate.{weight,bias},
// ffn.experts.E.w{1,3,2}.weight, ffn.shared_experts.w*). Scored layers:
// s = sqrt(softplus(x W^T)); top-k of s + bias; weights s over their sum,
// times routed_scaling_factor. Routed experts silu(min(w1 x, limit)) *
// clamp(w3 x, +-limit) (swiglu_limit), the shared expert unclamped
// (transformers' DeepseekV4). Layers below num_hash_layers route by token id
// and are refused; the run takes layer 1.

namespace {
constexpr double kV4Limit = 0.5, kV4Scaling = 2.5;
}  // namespace

FamilyModel MakeDeepseekV4() {
  nlohmann::json c = {{"model_type", "deepseek_v4"}, {"vocab_size", 256}, {"hidden_size", kHidden},
                      {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"num_key_value_heads", 1},
                      {"head_dim", 32}, {"q_lora_rank", 32}, {"qk_rope_head_dim", 16}, {"o_lora_rank", 32},
                      {"o_groups", 2}, {"moe_intermediate_size", kWidth}, {"n_routed_experts", kExperts},
                      {"n_shared_experts", 1}, {"num_experts_per_tok", kTopK}, {"num_hash_layers", 1},
                      {"scoring_func", "sqrtsoftplus"}, {"topk_method", "noaux_tc"}, {"norm_topk_prob", true},
                      {"routed_scaling_factor", kV4Scaling}, {"swiglu_limit", kV4Limit}, {"hidden_act", "silu"},
                      {"tie_word_embeddings", false}};
  FamilyModel m = Begin("deepseek_v4", c, 1);
  Rng rng("deepseek_v4 weights");
  const std::string block = "layers.1.ffn.";
  PutF32(&m, rng, block + "gate.weight", {kExperts, kHidden}, 0.3);
  PutF32(&m, rng, block + "gate.bias", {kExperts}, 0.1);
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = block + "experts." + std::to_string(e) + ".";
    PutF32(&m, rng, p + "w1.weight", {kWidth, kHidden}, 0.25);
    PutF32(&m, rng, p + "w3.weight", {kWidth, kHidden}, 0.25);
    PutF32(&m, rng, p + "w2.weight", {kHidden, kWidth}, 0.18);
  }
  PutF32(&m, rng, block + "shared_experts.w1.weight", {kWidth, kHidden}, 0.25);
  PutF32(&m, rng, block + "shared_experts.w3.weight", {kWidth, kHidden}, 0.25);
  PutF32(&m, rng, block + "shared_experts.w2.weight", {kHidden, kWidth}, 0.18);
  return m;
}

std::vector<double> DeepseekV4Reference(const FamilyModel& m) {
  const std::string block = "layers.1.ffn.";
  const auto& bias = Values(m, block + "gate.bias");
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    Vec s = Linear(Values(m, block + "gate.weight"), 0, kExperts, m.hidden, x);
    for (double& v : s) v = std::sqrt(std::log1p(std::exp(v)));
    Vec choice(kExperts);
    for (int64_t e = 0; e < kExperts; ++e) choice[e] = s[e] + bias[e];
    const std::vector<int64_t> idx = TopK(choice, kTopK);
    double total = 0;
    for (int64_t e : idx) total += s[e];
    Vec out = SiluMlp(m, block + "shared_experts.w1.weight", block + "shared_experts.w3.weight",
                      block + "shared_experts.w2.weight", kWidth, x);
    for (int64_t e : idx) {
      const std::string ex = block + "experts." + std::to_string(e) + ".";
      const Vec g = Linear(Values(m, ex + "w1.weight"), 0, kWidth, m.hidden, x);
      const Vec u = Linear(Values(m, ex + "w3.weight"), 0, kWidth, m.hidden, x);
      Vec h(kWidth);
      for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(std::min(g[f], kV4Limit)) * std::clamp(u[f], -kV4Limit, kV4Limit);
      AddScaled(&out, Linear(Values(m, ex + "w2.weight"), 0, m.hidden, kWidth, h), s[e] / total * kV4Scaling);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

}  // namespace moex::testing
