// Dense decoders (llama, mistral, qwen2, qwen3): no experts, active = total.
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadDense(const ConfigView& config, std::string_view model_type) {
  using L = FieldLimits;
  ModelArch arch;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims, blocks::BeginDecoder(config, model_type, &arch));
  MOEX_ASSIGN_OR_RETURN(int64_t width, config.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, config.BoolOr("attention_bias", false));
  MOEX_ASSIGN_OR_RETURN(bool mlp_bias, config.BoolOr("mlp_bias", false));
  // Mistral's sliding window applies everywhere; Qwen's only with use_sliding_window.
  MOEX_ASSIGN_OR_RETURN(bool use_window, config.BoolOr("use_sliding_window", model_type == "mistral"));
  MOEX_ASSIGN_OR_RETURN(int64_t window, config.IntOr("sliding_window", 0, 1LL << 30, 0));
  const bool is_qwen2 = model_type == "qwen2";
  const bool is_qwen3 = model_type == "qwen3";
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                             .num_heads = dims.num_heads,
                             .num_kv_heads = dims.num_kv_heads,
                             .head_dim = dims.head_dim,
                             .qkv_bias = is_qwen2 || attention_bias,
                             .o_bias = !is_qwen2 && attention_bias,
                             .extra_params = is_qwen3 ? 2 * dims.head_dim : 0,
                             .sliding_window = use_window ? window : 0},
                            &layer);
    layer.norm_params = 2 * dims.hidden_size;
    layer.ffn = FfnKind::kDense;
    layer.dense_mlp_params = blocks::GatedMlpParams(dims.hidden_size, width, mlp_bias);
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
