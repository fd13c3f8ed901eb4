// Qwen3-Next and Qwen3.5 MoE: hybrid layers of Gated DeltaNet (linear
// attention) and gated full attention (`layer_types`, or one full-attention
// layer every `full_attention_interval`), and a MoE block of many small
// experts (512, top-10) with one shared expert behind a sigmoid gate.
// Qwen3.5 nests the text model in `text_config` (its vision encoder is in
// `vision_config`).
#include <algorithm>

#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::model::families {
namespace {

using L = FieldLimits;

// Gated DeltaNet (Qwen3NextGatedDeltaNet): in_proj_qkvz [2k + 2v, H],
// in_proj_ba [2 nv, H], a depthwise conv1d over q, k and v [2k + v, 1,
// kernel] without bias, dt_bias and A_log [nv], the gated RMSNorm [dv],
// out_proj [H, v]; k = nk * dk, v = nv * dv.
struct DeltaNet {
  int64_t params = 0;
  int64_t state_flops_per_token = 0;
};

absl::StatusOr<DeltaNet> ReadDeltaNet(const ConfigView& text, int64_t hidden, std::vector<std::string>* assumed) {
  MOEX_ASSIGN_OR_RETURN(int64_t kernel, text.IntOr("linear_conv_kernel_dim", 1, L::kSmall, 4, assumed));
  MOEX_ASSIGN_OR_RETURN(int64_t dk, text.IntOr("linear_key_head_dim", 1, L::kHeadDim, 128, assumed));
  MOEX_ASSIGN_OR_RETURN(int64_t dv, text.IntOr("linear_value_head_dim", 1, L::kHeadDim, 128, assumed));
  MOEX_ASSIGN_OR_RETURN(int64_t nk, text.IntOr("linear_num_key_heads", 1, L::kHeads, 16, assumed));
  MOEX_ASSIGN_OR_RETURN(int64_t nv, text.IntOr("linear_num_value_heads", 1, L::kHeads, 32, assumed));
  if (nv % nk != 0) {
    return text.Invalid("linear_num_value_heads",
                        StrCat("(", nv, ") must be a multiple of linear_num_key_heads (", nk, ")"));
  }
  const int64_t k = nk * dk, v = nv * dv;
  DeltaNet d;
  d.params = hidden * (2 * k + 2 * v) + hidden * 2 * nv + (2 * k + v) * kernel + 2 * nv + dv + v * hidden;
  // The delta rule reads and updates each head's [dk, dv] state: about 4
  // FLOPs per state element per token.
  d.state_flops_per_token = 4 * nv * dk * dv;
  return d;
}

}  // namespace

absl::StatusOr<ModelArch> ReadQwen3Next(const ConfigView& config, std::string_view model_type) {
  ModelArch arch;
  arch.model_type = std::string(model_type);
  ConfigView text = config;
  if (config.Has("text_config")) {
    MOEX_ASSIGN_OR_RETURN(text, config.Object("text_config"));
  } else if (model_type == "qwen3_5_moe") {
    arch.assumptions.push_back("qwen3_5_moe without text_config: its fields read at the top level");
  }
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(text, /*default_tie=*/false, &arch.assumptions));
  // Qwen3.5 may keep tie_word_embeddings at the top level.
  if (!text.Has("tie_word_embeddings") && config.Has("tie_word_embeddings")) {
    MOEX_ASSIGN_OR_RETURN(dims.tie_word_embeddings, config.BoolOr("tie_word_embeddings", false));
  }
  blocks::SetEmbeddings(dims, &arch);
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(text, "num_experts", "num_experts_per_tok", "moe_intermediate_size"));
  MOEX_ASSIGN_OR_RETURN(int64_t shared_width, text.IntOr("shared_expert_intermediate_size", 0, L::kWidth, 0));
  MOEX_ASSIGN_OR_RETURN(int64_t sparse_step, text.IntOr("decoder_sparse_step", 1, L::kLayers, 1));
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> mlp_only, text.IntList("mlp_only_layers", 0, dims.num_layers - 1));
  int64_t dense_width = 0;
  if (!mlp_only.empty() || sparse_step > 1) {
    MOEX_ASSIGN_OR_RETURN(dense_width, text.Int("intermediate_size", 1, L::kWidth));
  }
  MOEX_ASSIGN_OR_RETURN(arch.router.norm_topk_prob, text.BoolOr("norm_topk_prob", true));
  MOEX_ASSIGN_OR_RETURN(std::vector<std::string> layer_types, text.StringList("layer_types"));
  if (layer_types.empty()) {
    MOEX_ASSIGN_OR_RETURN(int64_t interval,
                          text.IntOr("full_attention_interval", 1, L::kLayers, 4, &arch.assumptions));
    for (int64_t i = 0; i < dims.num_layers; ++i) {
      layer_types.push_back((i + 1) % interval == 0 ? "full_attention" : "linear_attention");
    }
  } else if (static_cast<int64_t>(layer_types.size()) != dims.num_layers) {
    return text.Invalid("layer_types", StrCat("has ", layer_types.size(), " entries for ", dims.num_layers, " layers"));
  }
  MOEX_ASSIGN_OR_RETURN(DeltaNet delta, ReadDeltaNet(text, dims.hidden_size, &arch.assumptions));
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, text.BoolOr("attention_bias", false));
  // Full attention with an output gate: q_proj is twice as wide (query and
  // gate), q and k RMSNorms over the head dim.
  const blocks::GqaAttention attention{.hidden_size = dims.hidden_size,
                                       .num_heads = dims.num_heads,
                                       .num_kv_heads = dims.num_kv_heads,
                                       .head_dim = dims.head_dim,
                                       .qkv_bias = attention_bias,
                                       .o_bias = false,
                                       .extra_params = dims.hidden_size * dims.num_heads * dims.head_dim +
                                                       (attention_bias ? dims.num_heads * dims.head_dim : 0) +
                                                       2 * dims.head_dim};
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    if (layer_types[i] == "full_attention") {
      blocks::AddGqaAttention(attention, &layer);
    } else if (layer_types[i] == "linear_attention") {
      layer.mixer = MixerKind::kMamba;  // a fixed-size recurrent state, no KV cache
      layer.mamba_params = delta.params;
      layer.mamba_scan_flops_per_token = delta.state_flops_per_token;
    } else {
      return text.Invalid("layer_types", StrCat("has '", layer_types[i], "' at layer ", i,
                                                "; known: linear_attention, full_attention"));
    }
    layer.norm_params = 2 * dims.hidden_size;
    const bool dense_only = std::find(mlp_only.begin(), mlp_only.end(), i) != mlp_only.end();
    blocks::SetQwenFfn({.hidden = dims.hidden_size,
                        .num_experts = experts.num_experts,
                        .top_k = experts.top_k,
                        .expert_width = experts.width,
                        .shared_width = shared_width,
                        .dense_width = dense_width},
                       !dense_only && (i + 1) % sparse_step == 0, &layer);
    arch.layers.push_back(layer);
  }
  arch.assumptions.push_back(
      "Gated DeltaNet (linear attention) layers are counted under 'mamba' (fixed-state mixers, no KV cache)");
  MOEX_ASSIGN_OR_RETURN(int64_t mtp, text.IntOr("mtp_num_hidden_layers", 0, 16, 0));
  if (mtp > 0) {
    arch.uncounted.push_back(StrCat(mtp, " MTP layer(s) (mtp_num_hidden_layers): not in the published total"));
  }
  if (config.Has("vision_config")) {
    arch.uncounted.push_back("the vision encoder (vision_config): its parameters are not counted");
  }
  return arch;
}

}  // namespace moex::model::families
