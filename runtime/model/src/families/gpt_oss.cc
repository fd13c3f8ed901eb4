// gpt-oss: experts with a fused gate_up projection and biases, attention
// with biases and one learned sink per head, alternating sliding windows.
#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadGptOss(const ConfigView& config) {
  using L = FieldLimits;
  ModelArch arch;
  arch.model_type = "gpt_oss";
  arch.expert_activation = "swiglu_clamped";  // alpha 1.702, limit swiglu_limit
  arch.expert_mlp.activation = ExpertActivation::kSwigluOai;
  arch.expert_mlp.biases = true;
  arch.router.has_bias = true;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(config, /*default_tie=*/false, &arch.assumptions));
  blocks::SetEmbeddings(dims, &arch);
  MOEX_ASSIGN_OR_RETURN(int64_t num_experts, config.Int("num_local_experts", 1, L::kExperts));
  int64_t top_k = 0;
  if (config.Has("num_experts_per_tok")) {
    MOEX_ASSIGN_OR_RETURN(top_k, config.Int("num_experts_per_tok", 1, L::kExperts));
  } else {
    MOEX_ASSIGN_OR_RETURN(top_k, config.Int("experts_per_token", 1, L::kExperts));
  }
  MOEX_RETURN_IF_ERROR(blocks::CheckTopK(config, "num_local_experts", num_experts, "num_experts_per_tok", top_k));
  MOEX_ASSIGN_OR_RETURN(int64_t expert_width, config.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(arch.expert_mlp.swiglu_limit, config.DoubleOr("swiglu_limit", 7.0));
  if (!(arch.expert_mlp.swiglu_limit > 0)) {
    return config.Invalid("swiglu_limit", StrCat("is ", arch.expert_mlp.swiglu_limit, "; it must be positive"));
  }
  MOEX_ASSIGN_OR_RETURN(int64_t window, config.IntOr("sliding_window", 0, 1LL << 30, 0));
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, config.BoolOr("attention_bias", true));
  MOEX_ASSIGN_OR_RETURN(std::vector<std::string> layer_types, config.StringList("layer_types"));
  if (!layer_types.empty() && static_cast<int64_t>(layer_types.size()) != dims.num_layers) {
    return config.Invalid("layer_types", StrCat("has ", layer_types.size(), " entries for ",
                                                     dims.num_layers, " layers"));
  }
  // Softmax over the top-k logits: the same as renormalised top-k.
  arch.router.norm_topk_prob = true;
  // gate_up_proj [E, H, 2F] + bias [E, 2F], down_proj [E, F, H] + bias [E, H].
  int64_t per_expert = blocks::GatedMlpParams(dims.hidden_size, expert_width, /*bias=*/true);
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    // Without layer_types, even layers slide and odd layers see everything,
    // as in the released models.
    bool sliding = window > 0 && (layer_types.empty() ? i % 2 == 0
                                                      : layer_types[i] == "sliding_attention");
    blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                             .num_heads = dims.num_heads,
                             .num_kv_heads = dims.num_kv_heads,
                             .head_dim = dims.head_dim,
                             .qkv_bias = attention_bias,
                             .o_bias = attention_bias,
                             .extra_params = dims.num_heads,  // sinks
                             .sliding_window = sliding ? window : 0},
                            &layer);
    layer.norm_params = 2 * dims.hidden_size;
    blocks::SetMoe(&layer, num_experts, top_k, expert_width, per_expert, 0,
                   num_experts * dims.hidden_size + num_experts);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
