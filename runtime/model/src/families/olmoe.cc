// OLMoE: 64 experts top-8 in every layer, full-width q/k RMSNorms.
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadOlmoe(const ConfigView& config) {
  using L = FieldLimits;
  ModelArch arch;
  arch.model_type = "olmoe";
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(config, /*default_tie=*/false, &arch.assumptions));
  blocks::SetEmbeddings(dims, &arch);
  MOEX_ASSIGN_OR_RETURN(int64_t num_experts, config.Int("num_experts", 1, L::kExperts));
  MOEX_ASSIGN_OR_RETURN(int64_t top_k, config.Int("num_experts_per_tok", 1, L::kExperts));
  MOEX_RETURN_IF_ERROR(blocks::CheckTopK(config, "num_experts", num_experts, "num_experts_per_tok", top_k));
  MOEX_ASSIGN_OR_RETURN(int64_t expert_width, config.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(arch.router.norm_topk_prob, config.BoolOr("norm_topk_prob", false));
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, config.BoolOr("attention_bias", false));
  int64_t qk_norms = dims.num_heads * dims.head_dim + dims.num_kv_heads * dims.head_dim;
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                             .num_heads = dims.num_heads,
                             .num_kv_heads = dims.num_kv_heads,
                             .head_dim = dims.head_dim,
                             .qkv_bias = attention_bias,
                             .o_bias = attention_bias,
                             .extra_params = qk_norms},
                            &layer);
    layer.norm_params = 2 * dims.hidden_size;
    blocks::SetMoe(&layer, num_experts, top_k, expert_width,
                   blocks::GatedMlpParams(dims.hidden_size, expert_width), 0,
                   num_experts * dims.hidden_size);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
