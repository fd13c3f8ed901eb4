// DBRX: its own field names (d_model, n_heads, n_layers) with attention and
// FFN settings nested in attn_config and ffn_config; fused Wqkv; LayerNorms
// without biases; 16 experts top-4.
#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadDbrx(const ConfigView& config) {
  using L = FieldLimits;
  ModelArch arch;
  arch.model_type = "dbrx";
  blocks::CommonDims dims;
  MOEX_ASSIGN_OR_RETURN(dims.vocab_size, config.Int("vocab_size", 1, L::kVocab));
  MOEX_ASSIGN_OR_RETURN(dims.hidden_size, config.Int("d_model", 1, L::kHidden));
  MOEX_ASSIGN_OR_RETURN(dims.num_layers, config.Int("n_layers", 1, L::kLayers));
  MOEX_ASSIGN_OR_RETURN(dims.num_heads, config.Int("n_heads", 1, L::kHeads));
  MOEX_ASSIGN_OR_RETURN(dims.tie_word_embeddings, config.BoolOr("tie_word_embeddings", false));
  if (dims.hidden_size % dims.num_heads != 0) {
    return config.Invalid("d_model", StrCat("(", dims.hidden_size,
                                                 ") must be a multiple of n_heads (",
                                                 dims.num_heads, ")"));
  }
  dims.head_dim = dims.hidden_size / dims.num_heads;
  MOEX_ASSIGN_OR_RETURN(ConfigView attn, config.Object("attn_config"));
  MOEX_ASSIGN_OR_RETURN(dims.num_kv_heads, attn.IntOr("kv_n_heads", 1, L::kHeads, 1, &arch.assumptions));
  MOEX_ASSIGN_OR_RETURN(ConfigView ffn, config.Object("ffn_config"));
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(ffn, "moe_num_experts", "moe_top_k", "ffn_hidden_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, expert_width = experts.width;
  blocks::SetEmbeddings(dims, &arch);
  // The chosen weights are divided by their p-norm, p = moe_normalize_expert_weights
  // (1 by default and in the released models); null: not normalised.
  if (!ffn.IsNull("moe_normalize_expert_weights")) {
    MOEX_ASSIGN_OR_RETURN(double p, ffn.DoubleOr("moe_normalize_expert_weights", 1.0));
    arch.router.norm_topk_prob = true;
    if (p != 1.0) {
      arch.run_unsupported.push_back(StrCat("ffn_config.moe_normalize_expert_weights = ", p,
                                            " (moex renormalises by the 1-norm only)"));
    }
  }
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                             .num_heads = dims.num_heads,
                             .num_kv_heads = dims.num_kv_heads,
                             .head_dim = dims.head_dim},
                            &layer);
    layer.norm_params = 2 * dims.hidden_size;
    // w1, v1 [F, H] and w2 [F, H] per expert: a gated MLP.
    blocks::SetMoe(&layer, num_experts, top_k, expert_width,
                   blocks::GatedMlpParams(dims.hidden_size, expert_width), 0,
                   num_experts * dims.hidden_size);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
