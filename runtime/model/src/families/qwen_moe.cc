// Qwen1.5/Qwen2-MoE (shared expert with a sigmoid gate, qkv biases) and
// Qwen3-MoE (q/k norms, no shared expert).
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadQwenMoe(const ConfigView& config, std::string_view model_type) {
  using L = FieldLimits;
  const bool is_qwen2 = model_type == "qwen2_moe";
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, model_type, &arch));
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(config, "num_experts", "num_experts_per_tok",
                                                 "moe_intermediate_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, expert_width = experts.width;
  MOEX_ASSIGN_OR_RETURN(int64_t dense_width, config.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t sparse_step, config.IntOr("decoder_sparse_step", 1, L::kLayers, 1));
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> mlp_only,
                        config.IntList("mlp_only_layers", 0, dims.num_layers - 1));
  MOEX_ASSIGN_OR_RETURN(arch.router.norm_topk_prob, config.BoolOr("norm_topk_prob", false));
  int64_t shared_width = 0;
  if (is_qwen2) {
    MOEX_ASSIGN_OR_RETURN(shared_width,
                          config.IntOr("shared_expert_intermediate_size", 0, L::kWidth, 0));
  }
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, config.BoolOr("attention_bias", false));

  blocks::GqaAttention attention{.hidden_size = dims.hidden_size,
                                 .num_heads = dims.num_heads,
                                 .num_kv_heads = dims.num_kv_heads,
                                 .head_dim = dims.head_dim,
                                 // Qwen2 always has q/k/v biases; Qwen3 has q/k RMSNorms.
                                 .qkv_bias = is_qwen2 || attention_bias,
                                 .o_bias = !is_qwen2 && attention_bias,
                                 .extra_params = is_qwen2 ? 0 : 2 * dims.head_dim};
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    blocks::AddGqaAttention(attention, &layer);
    layer.norm_params = 2 * dims.hidden_size;
    bool dense_only = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
    blocks::SetQwenFfn({.hidden = dims.hidden_size,
                        .num_experts = num_experts,
                        .top_k = top_k,
                        .expert_width = expert_width,
                        .shared_width = shared_width,
                        .dense_width = dense_width},
                       !dense_only && (i + 1) % sparse_step == 0, &layer);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
