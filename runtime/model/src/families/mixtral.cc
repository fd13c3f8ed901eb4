// Mixtral: every layer an 8-expert top-2 MoE with GQA attention.
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadMixtral(const ConfigView& config) {
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, "mixtral", &arch));
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(config, "num_local_experts", "num_experts_per_tok",
                                                 "intermediate_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, expert_width = experts.width;
  MOEX_ASSIGN_OR_RETURN(int64_t window, config.IntOr("sliding_window", 0, 1LL << 30, 0));
  arch.router.norm_topk_prob = true;  // softmax over all experts, then renormalise the top-k
  blocks::GqaAttention attention{.hidden_size = dims.hidden_size,
                                 .num_heads = dims.num_heads,
                                 .num_kv_heads = dims.num_kv_heads,
                                 .head_dim = dims.head_dim,
                                 .sliding_window = window};
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    blocks::AddGqaAttention(attention, &layer);
    layer.norm_params = 2 * dims.hidden_size;
    blocks::SetMoe(&layer, num_experts, top_k, expert_width,
                   blocks::GatedMlpParams(dims.hidden_size, expert_width), 0,
                   num_experts * dims.hidden_size);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
