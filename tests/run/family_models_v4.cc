// DeepSeek-V4 as released: a hash-routed layer (experts from
// ffn.gate.tid2eid by each token's id, input_ids beside the hidden states),
// the routed experts in FP4 packed two to an I8 byte with an F8_E8M0 scale
// per 32 inputs (`.scale`), the shared expert in F8_E4M3 with E8M0 128x128
// block scales, the router in BF16. The reference decodes every format
// here, by its own code, from the bytes it wrote.
//
// Hash layers (DeepseekV4HashRouter, DeepSeek's Gate with hash=True):
//   s = sqrt(softplus(x W^T)); idx = tid2eid[input_id]; w = s[idx] / sum(s[idx])
//   times routed_scaling_factor. No bias, no top-k.
// Experts: silu(min(w1 x, limit)) * clamp(w3 x, +-limit), then w2; the
// shared expert unclamped (transformers' DeepseekV4).
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "family_math.h"
#include "family_models.h"

namespace moex::testing {

using namespace math;  // NOLINT: the references read as formulas

namespace {

constexpr double kLimit = 0.5, kScaling = 2.5;
constexpr int64_t kV4TopK = 2, kVocab = 256;
constexpr double kE2M1[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};
const std::string kBlock = "layers.0.ffn.";

// e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities,
// 0x7f and 0xff are NaN.
double DecodeE4M3(uint8_t bits) {
  const int sign = bits >> 7, exponent = (bits >> 3) & 0xf, mantissa = bits & 0x7;
  const double magnitude = exponent == 0 ? std::ldexp(mantissa / 8.0, -6) : std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
  return sign ? -magnitude : magnitude;
}

// The e4m3fn code nearest `v`, by search over every finite code.
uint8_t NearestE4M3(double v) {
  uint8_t best = 0;
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    if (std::fabs(DecodeE4M3(static_cast<uint8_t>(code)) - v) < std::fabs(DecodeE4M3(best) - v)) {
      best = static_cast<uint8_t>(code);
    }
  }
  return best;
}

void PutBytes(FamilyModel* m, const std::string& name, const std::string& dtype, std::vector<int64_t> shape,
              std::vector<uint8_t> bytes) {
  m->tensors[name] = {dtype, std::move(shape), {}, std::move(bytes)};
}

// BF16 bytes of random values; `f32` keeps the values the bytes hold.
void PutBf16(FamilyModel* m, Rng& rng, const std::string& name, std::vector<int64_t> shape, double scale) {
  std::vector<float> values = rng.Uniform(Count(shape), scale);
  std::vector<uint8_t> bytes;
  for (float& v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits &= 0xffff0000u;  // truncate to bf16: the test keeps what it wrote
    std::memcpy(&v, &bits, 4);
    bytes.push_back(static_cast<uint8_t>(bits >> 16));
    bytes.push_back(static_cast<uint8_t>(bits >> 24));
  }
  m->tensors[name] = {"BF16", std::move(shape), std::move(values), std::move(bytes)};
}

// An FP4 matrix [rows, cols] as V4 stores a routed projection: I8 [rows,
// cols/2] (element 2i in the low nibble of byte i) and `.scale` F8_E8M0
// [rows, cols/32].
void PutFp4(FamilyModel* m, Rng& rng, const std::string& weight, int64_t rows, int64_t cols, int exponent) {
  std::uniform_int_distribution<int> nibble(0, 15), jitter(-1, 1);
  std::vector<uint8_t> values, scales;
  for (int64_t i = 0; i < rows * cols / 2; ++i) values.push_back(static_cast<uint8_t>(nibble(rng.gen) | nibble(rng.gen) << 4));
  for (int64_t i = 0; i < rows * cols / 32; ++i) scales.push_back(static_cast<uint8_t>(127 + exponent + jitter(rng.gen)));
  const std::string base = weight.substr(0, weight.size() - std::string(".weight").size());
  PutBytes(m, weight, "I8", {rows, cols / 2}, std::move(values));
  PutBytes(m, base + ".scale", "F8_E8M0", {rows, cols / 32}, std::move(scales));
}

std::vector<float> DecodeFp4(const FamilyModel& m, const std::string& weight, int64_t rows, int64_t cols) {
  const std::string base = weight.substr(0, weight.size() - std::string(".weight").size());
  const std::vector<uint8_t>& values = m.tensors.at(weight).u8;
  const std::vector<uint8_t>& scales = m.tensors.at(base + ".scale").u8;
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t byte = values[(r * cols + c) / 2];
      const int code = c % 2 == 0 ? byte & 0xf : byte >> 4;
      w[r * cols + c] = static_cast<float>(std::ldexp(kE2M1[code], scales[r * (cols / 32) + c / 32] - 127));
    }
  }
  return w;
}

// An FP8 matrix with its E8M0 block scale (one 128x128 block here).
void PutFp8(FamilyModel* m, Rng& rng, const std::string& weight, int64_t rows, int64_t cols, int exponent) {
  const std::vector<float> wanted = rng.Uniform(rows * cols, 4.0);
  std::vector<uint8_t> values;
  for (float v : wanted) values.push_back(NearestE4M3(v));
  const std::string base = weight.substr(0, weight.size() - std::string(".weight").size());
  PutBytes(m, weight, "F8_E4M3", {rows, cols}, std::move(values));
  PutBytes(m, base + ".scale", "F8_E8M0", {(rows + 127) / 128, (cols + 127) / 128},
           std::vector<uint8_t>(((rows + 127) / 128) * ((cols + 127) / 128), static_cast<uint8_t>(127 + exponent)));
}

std::vector<float> DecodeFp8(const FamilyModel& m, const std::string& weight, int64_t rows, int64_t cols) {
  const std::string base = weight.substr(0, weight.size() - std::string(".weight").size());
  const std::vector<uint8_t>& values = m.tensors.at(weight).u8;
  const std::vector<uint8_t>& scales = m.tensors.at(base + ".scale").u8;
  const int64_t block_cols = (cols + 127) / 128;
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int scale = scales[(r / 128) * block_cols + c / 128] - 127;
      w[r * cols + c] = static_cast<float>(std::ldexp(DecodeE4M3(values[r * cols + c]), scale));
    }
  }
  return w;
}

std::vector<uint8_t> I64Bytes(const std::vector<int64_t>& values) {
  std::vector<uint8_t> bytes(values.size() * 8);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

}  // namespace

FamilyModel MakeDeepseekV4Release() {
  nlohmann::json c = {{"model_type", "deepseek_v4"}, {"vocab_size", kVocab}, {"hidden_size", kHidden},
                      {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"num_key_value_heads", 1},
                      {"head_dim", 32}, {"q_lora_rank", 32}, {"qk_rope_head_dim", 16}, {"o_lora_rank", 32},
                      {"o_groups", 2}, {"moe_intermediate_size", kWidth}, {"n_routed_experts", kExperts},
                      {"n_shared_experts", 1}, {"num_experts_per_tok", kV4TopK}, {"num_hash_layers", 1},
                      {"scoring_func", "sqrtsoftplus"}, {"topk_method", "noaux_tc"}, {"norm_topk_prob", true},
                      {"routed_scaling_factor", kScaling}, {"swiglu_limit", kLimit}, {"hidden_act", "silu"},
                      {"expert_dtype", "fp4"}, {"tie_word_embeddings", false}};
  FamilyModel m = Begin("deepseek_v4_release", c, 0);
  Rng rng("deepseek_v4_release weights");
  PutBf16(&m, rng, kBlock + "gate.weight", {kExperts, kHidden}, 0.3);
  // Each token id's k distinct experts.
  std::vector<int64_t> table;
  for (int64_t v = 0; v < kVocab; ++v) {
    std::vector<int64_t> experts(kExperts);
    std::iota(experts.begin(), experts.end(), 0);
    std::shuffle(experts.begin(), experts.end(), rng.gen);
    table.insert(table.end(), experts.begin(), experts.begin() + kV4TopK);
  }
  PutBytes(&m, kBlock + "gate.tid2eid", "I64", {kVocab, kV4TopK}, I64Bytes(table));
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = kBlock + "experts." + std::to_string(e) + ".";
    PutFp4(&m, rng, p + "w1.weight", kWidth, kHidden, -4);
    PutFp4(&m, rng, p + "w3.weight", kWidth, kHidden, -4);
    PutFp4(&m, rng, p + "w2.weight", kHidden, kWidth, -4);
  }
  PutFp8(&m, rng, kBlock + "shared_experts.w1.weight", kWidth, kHidden, -4);
  PutFp8(&m, rng, kBlock + "shared_experts.w3.weight", kWidth, kHidden, -4);
  PutFp8(&m, rng, kBlock + "shared_experts.w2.weight", kHidden, kWidth, -5);
  std::uniform_int_distribution<int64_t> id(0, kVocab - 1);
  for (int64_t t = 0; t < m.tokens; ++t) m.input_ids.push_back(id(rng.gen));
  return m;
}

std::vector<double> DeepseekV4ReleaseReference(const FamilyModel& m) {
  const std::vector<uint8_t>& table_bytes = m.tensors.at(kBlock + "gate.tid2eid").u8;
  std::vector<int64_t> table(table_bytes.size() / 8);
  std::memcpy(table.data(), table_bytes.data(), table_bytes.size());
  const std::string shared = kBlock + "shared_experts.";
  const std::vector<float> sg = DecodeFp8(m, shared + "w1.weight", kWidth, kHidden);
  const std::vector<float> su = DecodeFp8(m, shared + "w3.weight", kWidth, kHidden);
  const std::vector<float> sd = DecodeFp8(m, shared + "w2.weight", kHidden, kWidth);
  std::vector<std::vector<float>> w1(kExperts), w3(kExperts), w2(kExperts);
  for (int e = 0; e < kExperts; ++e) {
    const std::string p = kBlock + "experts." + std::to_string(e) + ".";
    w1[e] = DecodeFp4(m, p + "w1.weight", kWidth, kHidden);
    w3[e] = DecodeFp4(m, p + "w3.weight", kWidth, kHidden);
    w2[e] = DecodeFp4(m, p + "w2.weight", kHidden, kWidth);
  }
  std::vector<Vec> y;
  for (int64_t t = 0; t < m.tokens; ++t) {
    const Vec x = Row(m, t);
    Vec s = Linear(Values(m, kBlock + "gate.weight"), 0, kExperts, m.hidden, x);
    for (double& v : s) v = std::sqrt(std::log1p(std::exp(v)));
    const int64_t* chosen = &table[m.input_ids[t] * kV4TopK];
    double total = 0;
    for (int64_t j = 0; j < kV4TopK; ++j) total += s[chosen[j]];
    // The shared expert, not clamped.
    const Vec g = Linear(sg, 0, kWidth, m.hidden, x), u = Linear(su, 0, kWidth, m.hidden, x);
    Vec h(kWidth);
    for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(g[f]) * u[f];
    Vec out = Linear(sd, 0, m.hidden, kWidth, h);
    for (int64_t j = 0; j < kV4TopK; ++j) {
      const int64_t e = chosen[j];
      const Vec ge = Linear(w1[e], 0, kWidth, m.hidden, x), ue = Linear(w3[e], 0, kWidth, m.hidden, x);
      for (int64_t f = 0; f < kWidth; ++f) h[f] = Silu(std::min(ge[f], kLimit)) * std::clamp(ue[f], -kLimit, kLimit);
      AddScaled(&out, Linear(w2[e], 0, m.hidden, kWidth, h), s[e] / total * kScaling);
    }
    y.push_back(out);
  }
  return Flatten(y);
}

}  // namespace moex::testing
