// OLMoE: 64 experts top-8 in every layer, full-width q/k RMSNorms.
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadOlmoe(const ConfigView& config) {
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, "olmoe", &arch));
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(config, "num_experts", "num_experts_per_tok",
                                                 "intermediate_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, expert_width = experts.width;
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
