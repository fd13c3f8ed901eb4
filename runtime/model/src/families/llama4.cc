// Llama 4 (Scout, Maverick): text model in `text_config`, MoE every
// `interleave_moe_layer_step` layers with one shared expert, dense layers of
// width `intermediate_size_mlp`, and a vision encoder in `vision_config`.
#include <algorithm>

#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {
namespace {

using L = FieldLimits;

// Vision encoder (ViT with biases), pixel-shuffle adapter and projector.
absl::StatusOr<int64_t> CountVision(const ConfigView& vision, int64_t text_hidden) {
  MOEX_ASSIGN_OR_RETURN(int64_t h, vision.Int("hidden_size", 1, L::kHidden));
  MOEX_ASSIGN_OR_RETURN(int64_t width, vision.Int("intermediate_size", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t layers, vision.Int("num_hidden_layers", 1, L::kLayers));
  MOEX_ASSIGN_OR_RETURN(int64_t patch, vision.Int("patch_size", 1, L::kSmall));
  MOEX_ASSIGN_OR_RETURN(int64_t image, vision.Int("image_size", 1, L::kSmall));
  MOEX_ASSIGN_OR_RETURN(int64_t channels, vision.IntOr("num_channels", 1, 64, 3));
  MOEX_ASSIGN_OR_RETURN(int64_t proj_in, vision.Int("projector_input_dim", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t proj_out, vision.Int("projector_output_dim", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t out_dim, vision.Int("vision_output_dim", 1, L::kWidth));
  int64_t per_layer = 4 * (h * h + h)                    // q, k, v, o with biases
                      + (h * width + width) + (width * h + h)  // fc1, fc2
                      + 2 * 2 * h;                         // two LayerNorms
  int64_t patches = (image / patch) * (image / patch);
  int64_t params = layers * per_layer
                   + channels * patch * patch * h  // patch embedding
                   + h + (patches + 1) * h         // class and position embeddings
                   + 2 * 2 * h                     // pre and post LayerNorms
                   + width * proj_in + proj_out * proj_out  // pixel-shuffle MLP
                   + out_dim * text_hidden;        // multi-modal projector
  return params;
}

}  // namespace

absl::StatusOr<ModelArch> ReadLlama4(const ConfigView& config, std::string_view model_type) {
  ModelArch arch;
  arch.model_type = std::string(model_type);
  ConfigView text = config;
  if (model_type == "llama4") {
    MOEX_ASSIGN_OR_RETURN(text, config.Object("text_config"));
  }
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(text, /*default_tie=*/false, &arch.assumptions));
  blocks::SetEmbeddings(dims, &arch);
  MOEX_ASSIGN_OR_RETURN(blocks::ExpertCounts experts,
                        blocks::ReadExpertCounts(text, "num_local_experts", "num_experts_per_tok",
                                                 "intermediate_size"));
  const int64_t num_experts = experts.num_experts, top_k = experts.top_k, expert_width = experts.width;
  MOEX_ASSIGN_OR_RETURN(int64_t dense_width, text.Int("intermediate_size_mlp", 1, L::kWidth));
  MOEX_ASSIGN_OR_RETURN(int64_t step, text.IntOr("interleave_moe_layer_step", 1, L::kLayers, 1));
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> moe_layers,
                        text.IntList("moe_layers", 0, dims.num_layers - 1));
  MOEX_ASSIGN_OR_RETURN(int64_t chunk, text.IntOr("attention_chunk_size", 0, 1LL << 30, 0));
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> rope_layers, text.IntList("no_rope_layers", 0, 1));
  if (!rope_layers.empty() && static_cast<int64_t>(rope_layers.size()) != dims.num_layers) {
    return text.Invalid("no_rope_layers", StrCat("has ", rope_layers.size(),
                                                      " entries for ", dims.num_layers, " layers"));
  }
  // Llama 4 scores the chosen experts with a sigmoid, no renormalisation,
  // and scales each expert's input (not its output) by that score.
  arch.router.scoring = "sigmoid";
  arch.router.weight_on_input = true;
  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    // Layers that use RoPE attend within chunks; count a chunk as a window.
    bool chunked = chunk > 0 && !rope_layers.empty() && rope_layers[i] != 0;
    blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                             .num_heads = dims.num_heads,
                             .num_kv_heads = dims.num_kv_heads,
                             .head_dim = dims.head_dim,
                             .sliding_window = chunked ? chunk : 0},
                            &layer);
    layer.norm_params = 2 * dims.hidden_size;
    bool is_moe = moe_layers.empty()
                      ? (i + 1) % step == 0
                      : std::find(moe_layers.begin(), moe_layers.end(), i) != moe_layers.end();
    if (is_moe) {
      int64_t per_expert = blocks::GatedMlpParams(dims.hidden_size, expert_width);
      blocks::SetMoe(&layer, num_experts, top_k, expert_width, per_expert, per_expert,
                     num_experts * dims.hidden_size);
      layer.moe.shared_intermediate_size = expert_width;  // one shared expert as wide as a routed one
    } else {
      layer.ffn = FfnKind::kDense;
      layer.dense_mlp_params = blocks::GatedMlpParams(dims.hidden_size, dense_width);
    }
    arch.layers.push_back(layer);
  }
  if (model_type == "llama4" && config.Has("vision_config")) {
    MOEX_ASSIGN_OR_RETURN(ConfigView vision, config.Object("vision_config"));
    MOEX_ASSIGN_OR_RETURN(arch.vision_params, CountVision(vision, dims.hidden_size));
  }
  return arch;
}

}  // namespace moex::model::families
