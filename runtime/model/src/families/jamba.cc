// Jamba: Mamba (v1) and attention layers interleaved by period and offset,
// MoE feed-forward every `expert_layer_period` layers, dense elsewhere.
#include <cmath>

#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {
namespace {

using L = FieldLimits;

// Reads a period/offset pair and checks offset < period.
absl::Status ReadPattern(const ConfigView& config, std::string_view period_key,
                         std::string_view offset_key, int64_t* period, int64_t* offset) {
  MOEX_ASSIGN_OR_RETURN(*period, config.Int(period_key, 1, L::kLayers));
  MOEX_ASSIGN_OR_RETURN(*offset, config.Int(offset_key, 0, L::kLayers));
  if (*offset >= *period) {
    return config.Invalid(offset_key, StrCat("(", *offset, ") must be below ", period_key,
                                                  " (", *period, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelArch> ReadJamba(const ConfigView& config) {
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, "jamba", &arch));
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(config, "num_experts", "num_experts_per_tok",
                                                 "intermediate_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, width = experts.width;
  int64_t attn_period, attn_offset, expert_period, expert_offset;
  MOEX_RETURN_IF_ERROR(ReadPattern(config, "attn_layer_period", "attn_layer_offset", &attn_period, &attn_offset));
  MOEX_RETURN_IF_ERROR(ReadPattern(config, "expert_layer_period", "expert_layer_offset", &expert_period, &expert_offset));

  // Mamba v1 mixer.
  MOEX_ASSIGN_OR_RETURN(int64_t d_state, config.Int("mamba_d_state", 1, L::kSmall));
  MOEX_ASSIGN_OR_RETURN(int64_t d_conv, config.Int("mamba_d_conv", 1, L::kSmall));
  MOEX_ASSIGN_OR_RETURN(int64_t expand, config.Int("mamba_expand", 1, 16));
  int64_t dt_rank = 0;
  if (absl::StatusOr<std::string> text = config.String("mamba_dt_rank"); text.ok()) {
    if (*text != "auto") return config.Invalid("mamba_dt_rank", "must be an integer or \"auto\"");
    dt_rank = (dims.hidden_size + 15) / 16;  // "auto": ceil(hidden / 16)
  } else {
    MOEX_ASSIGN_OR_RETURN(dt_rank, config.Int("mamba_dt_rank", 1, L::kWidth));
  }
  MOEX_ASSIGN_OR_RETURN(bool conv_bias, config.BoolOr("mamba_conv_bias", true));
  MOEX_ASSIGN_OR_RETURN(bool proj_bias, config.BoolOr("mamba_proj_bias", false));
  int64_t d_inner = expand * dims.hidden_size;
  int64_t mamba = dims.hidden_size * 2 * d_inner + (proj_bias ? 2 * d_inner : 0)  // in_proj
                  + d_inner * d_conv + (conv_bias ? d_inner : 0)                   // conv1d
                  + d_inner * (dt_rank + 2 * d_state)                              // x_proj
                  + dt_rank * d_inner + d_inner                                    // dt_proj
                  + d_inner * d_state + d_inner                                    // A_log, D
                  + d_inner * dims.hidden_size + (proj_bias ? dims.hidden_size : 0)  // out_proj
                  + dt_rank + 2 * d_state;  // dt, B and C layernorms
  // Selective scan: discretise, update and read the state, about 6 FLOPs per
  // state element per token.
  int64_t scan_flops = 6 * d_inner * d_state;

  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    if (i % attn_period == attn_offset) {
      blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                               .num_heads = dims.num_heads,
                               .num_kv_heads = dims.num_kv_heads,
                               .head_dim = dims.head_dim},
                              &layer);
    } else {
      layer.mixer = MixerKind::kMamba;
      layer.mamba_params = mamba;
      layer.mamba_scan_flops_per_token = scan_flops;
    }
    layer.norm_params = 2 * dims.hidden_size;
    if (num_experts > 1 && i % expert_period == expert_offset) {
      blocks::SetMoe(&layer, num_experts, top_k, width,
                     blocks::GatedMlpParams(dims.hidden_size, width), 0,
                     num_experts * dims.hidden_size);
    } else {
      layer.ffn = FfnKind::kDense;
      layer.dense_mlp_params = blocks::GatedMlpParams(dims.hidden_size, width);
    }
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
