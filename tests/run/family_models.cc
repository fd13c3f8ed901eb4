#include "family_models.h"

#include <cmath>
#include <string>
#include <vector>

#include "family_math.h"

namespace moex::testing {
namespace {

using namespace math;  // NOLINT: the references read as formulas

// ---- Jamba: softmax over all experts, top-k, no renormalisation ----------
// (JambaSparseMoeBlock). MoE every expert_layer_period layers from the offset.

FamilyModel MakeJamba() {
  nlohmann::json c = Decoder("jamba", 4);
  c.update({{"intermediate_size", kWidth}, {"num_experts", kExperts}, {"num_experts_per_tok", 2},
            {"attn_layer_period", 2}, {"attn_layer_offset", 1}, {"expert_layer_period", 2},
            {"expert_layer_offset", 1}, {"mamba_d_state", 16}, {"mamba_d_conv", 4}, {"mamba_expand", 2},
            {"mamba_dt_rank", "auto"}});
  FamilyModel m = Begin("jamba", c, 1);
  Rng rng("jamba weights");
  const std::string block = "model.layers.1.feed_forward.";
  PutF32(&m, rng, block + "router.weight", {kExperts, kHidden}, 0.3);
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = block + "experts." + std::to_string(e) + ".";
    PutF32(&m, rng, p + "gate_proj.weight", {kWidth, kHidden}, 0.125);
    PutF32(&m, rng, p + "up_proj.weight", {kWidth, kHidden}, 0.125);
    PutF32(&m, rng, p + "down_proj.weight", {kHidden, kWidth}, 0.18);
  }
  return m;
}

std::vector<double> JambaReference(const FamilyModel& m) {
  const std::string block = "model.layers.1.feed_forward.";
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    const Vec p = Softmax(Linear(Values(m, block + "router.weight"), 0, kExperts, m.hidden, x));
    Vec out(m.hidden, 0.0);
    for (int64_t e : TopK(p, 2)) {
      const std::string ex = block + "experts." + std::to_string(e) + ".";
      AddScaled(&out, SiluMlp(m, ex + "gate_proj.weight", ex + "up_proj.weight", ex + "down_proj.weight", kWidth, x),
                p[e]);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- DBRX: softmax, top-k, weights over their 1-norm -----------------------
// (DbrxRouter with moe_normalize_expert_weights = 1); experts fused as
// w1, v1 [E*F, H] (gate, up) and w2 [E*F, H], used as x @ w2[e].

FamilyModel MakeDbrx() {
  nlohmann::json c = {{"model_type", "dbrx"}, {"vocab_size", 256}, {"d_model", kHidden}, {"n_layers", 2},
                      {"n_heads", 4}, {"max_seq_len", 128},
                      {"attn_config", {{"kv_n_heads", 2}, {"clip_qkv", 8}, {"rope_theta", 500000}}},
                      {"ffn_config",
                       {{"moe_num_experts", kExperts}, {"moe_top_k", 2}, {"ffn_hidden_size", kWidth},
                        {"moe_normalize_expert_weights", 1}, {"moe_jitter_eps", 0}}}};
  FamilyModel m = Begin("dbrx", c, 0);
  Rng rng("dbrx weights");
  const std::string block = "transformer.blocks.0.ffn.";
  PutF32(&m, rng, block + "router.layer.weight", {kExperts, kHidden}, 0.3);
  PutF32(&m, rng, block + "experts.mlp.w1", {kExperts * kWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "experts.mlp.v1", {kExperts * kWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "experts.mlp.w2", {kExperts * kWidth, kHidden}, 0.18);
  return m;
}

std::vector<double> DbrxReference(const FamilyModel& m) {
  const std::string block = "transformer.blocks.0.ffn.";
  const auto& w1 = Values(m, block + "experts.mlp.w1");
  const auto& v1 = Values(m, block + "experts.mlp.v1");
  const auto& w2 = Values(m, block + "experts.mlp.w2");
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    const Vec p = Softmax(Linear(Values(m, block + "router.layer.weight"), 0, kExperts, m.hidden, x));
    const std::vector<int64_t> idx = TopK(p, 2);
    double norm = 0;
    for (int64_t e : idx) norm += std::fabs(p[e]);
    Vec out(m.hidden, 0.0);
    for (int64_t e : idx) {
      const Vec g = Linear(w1, e * kWidth * m.hidden, kWidth, m.hidden, x);
      const Vec u = Linear(v1, e * kWidth * m.hidden, kWidth, m.hidden, x);
      Vec h(kWidth);
      for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(g[f]) * u[f];
      AddScaled(&out, Times(h, w2, e * kWidth * m.hidden, kWidth, m.hidden), p[e] / norm);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

// ---- Llama 4: top-1 by logit, sigmoid of it scales the expert's input ------
// (Llama4TextMoe): experts.gate_up_proj [E, H, 2F] (gate: first half),
// experts.down_proj [E, F, H], both x @ W; a shared expert added. MoE
// every interleave_moe_layer_step layers; the multimodal checkpoint's text
// model lives under language_model.

FamilyModel MakeLlama4() {
  nlohmann::json text = Decoder("llama4_text", 4);
  text.update({{"intermediate_size", kWidth}, {"intermediate_size_mlp", 96}, {"num_local_experts", kExperts},
               {"num_experts_per_tok", 1}, {"interleave_moe_layer_step", 2}});
  nlohmann::json c = {{"model_type", "llama4"}, {"text_config", text}};
  FamilyModel m = Begin("llama4", c, 1);
  Rng rng("llama4 weights");
  const std::string block = "language_model.model.layers.1.feed_forward.";
  PutF32(&m, rng, block + "router.weight", {kExperts, kHidden}, 0.3);
  PutF32(&m, rng, block + "experts.gate_up_proj", {kExperts, kHidden, 2 * kWidth}, 0.125);
  PutF32(&m, rng, block + "experts.down_proj", {kExperts, kWidth, kHidden}, 0.18);
  PutF32(&m, rng, block + "shared_expert.gate_proj.weight", {kWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "shared_expert.up_proj.weight", {kWidth, kHidden}, 0.125);
  PutF32(&m, rng, block + "shared_expert.down_proj.weight", {kHidden, kWidth}, 0.18);
  return m;
}

std::vector<double> Llama4Reference(const FamilyModel& m) {
  const std::string block = "language_model.model.layers.1.feed_forward.";
  const auto& gate_up = Values(m, block + "experts.gate_up_proj");
  const auto& down = Values(m, block + "experts.down_proj");
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    const Vec logits = Linear(Values(m, block + "router.weight"), 0, kExperts, m.hidden, x);
    Vec out = SiluMlp(m, block + "shared_expert.gate_proj.weight", block + "shared_expert.up_proj.weight",
                      block + "shared_expert.down_proj.weight", kWidth, x);
    for (int64_t e : TopK(logits, 1)) {
      Vec in = x;
      for (double& v : in) v *= Sigmoid(logits[e]);
      const Vec gu = Times(in, gate_up, e * kHidden * 2 * kWidth, kHidden, 2 * kWidth);
      Vec h(kWidth);
      for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(gu[f]) * gu[kWidth + f];
      AddScaled(&out, Times(h, down, e * kWidth * kHidden, kWidth, kHidden), 1.0);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

}  // namespace

// gpt-oss, Nemotron-H and the Qwen3-Next family are in family_models_more.cc.
FamilyModel MakeGptOss();
std::vector<double> GptOssReference(const FamilyModel& m);
FamilyModel MakeNemotronH();
std::vector<double> NemotronHReference(const FamilyModel& m);
FamilyModel MakeQwen3Next();
std::vector<double> Qwen3NextReference(const FamilyModel& m);
FamilyModel MakeQwen35();
std::vector<double> Qwen35Reference(const FamilyModel& m);
FamilyModel MakeDeepseekV4();
std::vector<double> DeepseekV4Reference(const FamilyModel& m);
FamilyModel MakeDeepseekV4Release();
std::vector<double> DeepseekV4ReleaseReference(const FamilyModel& m);

const std::vector<Family>& Families() {
  static const std::vector<Family> families = {
      {"jamba", MakeJamba, JambaReference},
      {"dbrx", MakeDbrx, DbrxReference},
      {"llama4", MakeLlama4, Llama4Reference},
      {"gpt_oss", MakeGptOss, GptOssReference},
      {"nemotron_h", MakeNemotronH, NemotronHReference},
      {"qwen3_next", MakeQwen3Next, Qwen3NextReference},
      {"qwen3_5_moe", MakeQwen35, Qwen35Reference},
      {"deepseek_v4", MakeDeepseekV4, DeepseekV4Reference},
      {"deepseek_v4_release", MakeDeepseekV4Release, DeepseekV4ReleaseReference},
  };
  return families;
}

const Family* FindFamily(const std::string& name) {
  for (const Family& f : Families()) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

}  // namespace moex::testing
