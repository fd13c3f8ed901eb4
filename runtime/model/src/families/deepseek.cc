// DeepSeek-V2/V3, Kimi K2 (a DeepSeek-V3 architecture) and DeepSeek-V4.
#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {
namespace {

using L = FieldLimits;

// Multi-head latent attention (DeepSeek-V2 paper, section 2.1).
struct Mla {
  int64_t hidden = 0;
  int64_t heads = 0;
  std::optional<int64_t> q_lora_rank;  // absent: q projected directly (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool attention_bias = false;
};

void AddMla(const Mla& m, LayerSpec* layer) {
  int64_t qk_head_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
  int64_t params = 0;
  if (m.q_lora_rank) {
    // q_a_proj [q_lora, H], q_a_layernorm [q_lora], q_b_proj [heads*qk, q_lora]
    params += m.hidden * *m.q_lora_rank + *m.q_lora_rank + *m.q_lora_rank * m.heads * qk_head_dim;
    if (m.attention_bias) params += *m.q_lora_rank;
  } else {
    params += m.hidden * m.heads * qk_head_dim;  // q_proj
  }
  // kv_a_proj_with_mqa [kv_lora + rope, H], kv_a_layernorm [kv_lora],
  // kv_b_proj [heads*(nope+v), kv_lora], o_proj [H, heads*v]
  params += m.hidden * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank;
  if (m.attention_bias) params += m.kv_lora_rank + m.qk_rope_head_dim;
  params += m.kv_lora_rank * m.heads * (m.qk_nope_head_dim + m.v_head_dim);
  params += m.heads * m.v_head_dim * m.hidden;
  if (m.attention_bias) params += m.hidden;
  layer->mixer = MixerKind::kAttention;
  layer->attention_params = params;
  layer->attention.num_heads = m.heads;
  layer->attention.qk_head_dim = qk_head_dim;
  layer->attention.v_head_dim = m.v_head_dim;
  // The cache holds the compressed latent and the shared rope key.
  layer->attention.kv_cache_elems_per_token = m.kv_lora_rank + m.qk_rope_head_dim;
}

// Router fields shared by V2, V3 and V4.
absl::Status ReadRouter(const ConfigView& config, std::string_view default_scoring,
                        int64_t num_experts, RouterSpec* router) {
  MOEX_ASSIGN_OR_RETURN(router->scoring, config.StringOr("scoring_func", std::string(default_scoring)));
  if (router->scoring != "softmax" && router->scoring != "sigmoid" &&
      router->scoring != "sqrtsoftplus") {
    return config.Invalid("scoring_func", StrCat("is '", router->scoring,
                                                      "'; known: softmax, sigmoid, sqrtsoftplus"));
  }
  MOEX_ASSIGN_OR_RETURN(router->norm_topk_prob, config.BoolOr("norm_topk_prob", false));
  MOEX_ASSIGN_OR_RETURN(router->num_groups, config.IntOr("n_group", 1, L::kExperts, 1));
  MOEX_ASSIGN_OR_RETURN(router->topk_groups, config.IntOr("topk_group", 1, L::kExperts, 1));
  MOEX_ASSIGN_OR_RETURN(router->routed_scaling_factor, config.DoubleOr("routed_scaling_factor", 1.0));
  MOEX_ASSIGN_OR_RETURN(std::string topk_method, config.StringOr("topk_method", "greedy"));
  router->has_correction_bias = topk_method == "noaux_tc";
  if (num_experts % router->num_groups != 0) {
    return config.Invalid("n_group", StrCat("(", router->num_groups,
                                                 ") must divide the routed expert count (",
                                                 num_experts, ")"));
  }
  if (router->topk_groups > router->num_groups) {
    return config.Invalid("topk_group", StrCat("(", router->topk_groups,
                                                    ") exceeds n_group (", router->num_groups, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelArch> ReadDeepseek(const ConfigView& config, std::string_view model_type) {
  ModelArch arch;
  arch.model_type = std::string(model_type);
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(config, /*default_tie=*/false, &arch.assumptions,
                                               /*uses_head_dim=*/false));
  blocks::SetEmbeddings(dims, &arch);

  Mla mla;
  mla.hidden = dims.hidden_size;
  mla.heads = dims.num_heads;
  MOEX_ASSIGN_OR_RETURN(mla.q_lora_rank, config.OptionalInt("q_lora_rank", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(mla.kv_lora_rank, config.Int("kv_lora_rank", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(mla.qk_nope_head_dim, config.Int("qk_nope_head_dim", 0, L::kHeadDim));
  MOEX_ASSIGN_OR_RETURN(mla.qk_rope_head_dim, config.Int("qk_rope_head_dim", 0, L::kHeadDim));
  MOEX_ASSIGN_OR_RETURN(mla.v_head_dim, config.Int("v_head_dim", 1, L::kHeadDim));
  MOEX_ASSIGN_OR_RETURN(mla.attention_bias, config.BoolOr("attention_bias", false));

  MOEX_ASSIGN_OR_RETURN(int64_t dense_width, config.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(std::optional<int64_t> routed,
                        config.OptionalInt("n_routed_experts", 1, L::kExperts));
  int64_t num_experts = routed.value_or(0);
  int64_t shared = 0, top_k = 0, expert_width = 0, first_dense = 0, moe_freq = 1;
  if (num_experts > 0) {
    MOEX_ASSIGN_OR_RETURN(shared, config.IntOr("n_shared_experts", 0, L::kExperts, 0));
    MOEX_ASSIGN_OR_RETURN(top_k, config.Int("num_experts_per_tok", 1, L::kExperts));
    MOEX_RETURN_IF_ERROR(
        blocks::CheckTopK(config, "n_routed_experts", num_experts, "num_experts_per_tok", top_k));
    MOEX_ASSIGN_OR_RETURN(expert_width, config.Int("moe_intermediate_size", 1, L::kWidth));
    MOEX_ASSIGN_OR_RETURN(first_dense, config.IntOr("first_k_dense_replace", 0, L::kLayers, 0));
    MOEX_ASSIGN_OR_RETURN(moe_freq, config.IntOr("moe_layer_freq", 1, L::kLayers, 1));
    MOEX_RETURN_IF_ERROR(ReadRouter(config, model_type == "deepseek_v2" ? "softmax" : "sigmoid",
                                    num_experts, &arch.router));
  }
  MOEX_ASSIGN_OR_RETURN(int64_t num_mtp, config.IntOr("num_nextn_predict_layers", 0, 16, 0));

  auto make_layer = [&](int64_t index) {
    LayerSpec layer;
    AddMla(mla, &layer);
    layer.norm_params = 2 * dims.hidden_size;
    bool is_moe = num_experts > 0 && index >= first_dense && index % moe_freq == 0;
    if (is_moe) {
      int64_t per_expert = blocks::GatedMlpParams(dims.hidden_size, expert_width);
      int64_t router = num_experts * dims.hidden_size +
                       (arch.router.has_correction_bias ? num_experts : 0);
      blocks::SetMoe(&layer, num_experts, top_k, expert_width, per_expert,
                     blocks::GatedMlpParams(dims.hidden_size, shared * expert_width), router);
      layer.moe.shared_intermediate_size = shared * expert_width;
    } else {
      layer.ffn = FfnKind::kDense;
      layer.dense_mlp_params = blocks::GatedMlpParams(dims.hidden_size, dense_width);
    }
    return layer;
  };
  for (int64_t i = 0; i < dims.num_layers; ++i) arch.layers.push_back(make_layer(i));
  // Each MTP module: enorm, hnorm [H], eh_proj [H, 2H], one decoder layer and
  // the shared head's norm; it shares the embedding and LM head.
  for (int64_t i = 0; i < num_mtp; ++i) {
    arch.mtp_layers.push_back(make_layer(dims.num_layers + i));
    arch.mtp_extra_params += 3 * dims.hidden_size + 2 * dims.hidden_size * dims.hidden_size;
  }
  return arch;
}

absl::StatusOr<ModelArch> ReadDeepseekV4(const ConfigView& config) {
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, "deepseek_v4", &arch));
  MOEX_ASSIGN_OR_RETURN(int64_t q_lora, config.Int("q_lora_rank", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t o_lora, config.Int("o_lora_rank", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t o_groups, config.Int("o_groups", 1, L::kHeads));
  MOEX_ASSIGN_OR_RETURN(int64_t rope_dim, config.IntOr("qk_rope_head_dim", 0, L::kHeadDim, 0));
  MOEX_ASSIGN_OR_RETURN(int64_t num_experts, config.Int("n_routed_experts", 1, L::kExperts));
  MOEX_ASSIGN_OR_RETURN(int64_t shared, config.IntOr("n_shared_experts", 0, L::kExperts, 0));
  MOEX_ASSIGN_OR_RETURN(int64_t top_k, config.Int("num_experts_per_tok", 1, L::kExperts));
  MOEX_RETURN_IF_ERROR(
      blocks::CheckTopK(config, "n_routed_experts", num_experts, "num_experts_per_tok", top_k));
  MOEX_ASSIGN_OR_RETURN(int64_t expert_width, config.Int("moe_intermediate_size", 1, L::kWidth));
  MOEX_RETURN_IF_ERROR(ReadRouter(config, "sqrtsoftplus", num_experts, &arch.router));
  // V4 chooses with its gate's bias and renormalises whatever topk_method
  // and norm_topk_prob say elsewhere (DeepSeek's inference code).
  arch.router.has_correction_bias = true;
  MOEX_ASSIGN_OR_RETURN(arch.router.norm_topk_prob, config.BoolOr("norm_topk_prob", true));
  // Routed experts: silu(min(gate, limit)) * clamp(up, +-limit); the shared
  // expert unclamped (transformers' DeepseekV4).
  MOEX_ASSIGN_OR_RETURN(arch.expert_mlp.swiglu_limit, config.DoubleOr("swiglu_limit", 0.0));
  if (arch.expert_mlp.swiglu_limit < 0) return config.Invalid("swiglu_limit", "must not be negative");
  MOEX_ASSIGN_OR_RETURN(int64_t hash_layers, config.IntOr("num_hash_layers", 0, L::kLayers, 0));
  if (dims.num_heads % o_groups != 0) {
    return config.Invalid("o_groups", StrCat("(", o_groups,
                                                  ") must divide num_attention_heads (",
                                                  dims.num_heads, ")"));
  }
  int64_t q_width = dims.num_heads * dims.head_dim;
  int64_t kv_width = dims.num_kv_heads * dims.head_dim;
  // wq_a [q_lora, H], q_norm [q_lora], wq_b [heads*d, q_lora], wkv [kv*d, H],
  // kv_norm [d], grouped output LoRA wo_a [groups*o_lora, heads*d/groups],
  // wo_b [H, groups*o_lora], one attention sink per head.
  int64_t attention = dims.hidden_size * q_lora + q_lora + q_lora * q_width +
                      dims.hidden_size * kv_width + dims.head_dim + q_width * o_lora +
                      o_groups * o_lora * dims.hidden_size + dims.num_heads;
  arch.assumptions.push_back(
      "deepseek_v4 attention counted as: low-rank q (q_lora_rank), one shared kv projection, "
      "grouped low-rank output (o_groups x o_lora_rank), one sink per head");
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    layer.mixer = MixerKind::kAttention;
    layer.attention_params = attention;
    layer.attention.num_heads = dims.num_heads;
    layer.attention.qk_head_dim = dims.head_dim;
    layer.attention.v_head_dim = dims.head_dim;
    layer.attention.kv_cache_elems_per_token = kv_width;  // one shared k=v vector
    layer.norm_params = 2 * dims.hidden_size;
    int64_t router = num_experts * dims.hidden_size + (arch.router.has_correction_bias ? num_experts : 0);
    blocks::SetMoe(&layer, num_experts, top_k, expert_width,
                   blocks::GatedMlpParams(dims.hidden_size, expert_width),
                   blocks::GatedMlpParams(dims.hidden_size, shared * expert_width), router);
    layer.moe.shared_intermediate_size = shared * expert_width;
    layer.moe.hash_routed = i < hash_layers;  // experts from tid2eid[input_ids]
    arch.layers.push_back(layer);
  }
  if (config.Has("compress_ratios") || config.Has("index_n_heads")) {
    arch.uncounted.push_back(
        "compressed-attention compressors and sparse-attention indexers (compress_ratios, "
        "index_n_heads, index_head_dim): their weight shapes are not defined by config.json");
  }
  if (config.Has("hc_mult")) {
    arch.uncounted.push_back(
        "hyper-connection mixing weights (hc_mult): shapes not defined by config.json; the "
        "KV-cache figure also ignores compression");
  }
  if (config.Has("num_hash_layers")) {
    arch.uncounted.push_back(
        "hash-routed layers (num_hash_layers) are counted as scored MoE layers; their "
        "token-to-expert tables are buffers, not parameters");
  }
  MOEX_ASSIGN_OR_RETURN(int64_t num_mtp, config.IntOr("num_nextn_predict_layers", 0, 16, 0));
  if (num_mtp > 0) {
    arch.uncounted.push_back(StrCat(num_mtp,
                                          " MTP module(s) (num_nextn_predict_layers): their "
                                          "structure is not defined by config.json"));
  }
  (void)rope_dim;  // part of head_dim in V4; read only to validate it
  return arch;
}

}  // namespace moex::model::families
