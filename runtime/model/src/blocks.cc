#include "blocks.h"

#include "moex/core/str_cat.h"
#include "moex/core/status_macros.h"

namespace moex::model::blocks {

absl::StatusOr<CommonDims> ReadCommonDims(const ConfigView& config, bool default_tie,
                                          std::vector<std::string>* assumed, bool uses_head_dim) {
  using L = FieldLimits;
  CommonDims dims;
  MOEX_ASSIGN_OR_RETURN(dims.vocab_size, config.Int("vocab_size", 1, L::kVocab));
  MOEX_ASSIGN_OR_RETURN(dims.hidden_size, config.Int("hidden_size", 1, L::kHidden));
  MOEX_ASSIGN_OR_RETURN(dims.num_layers, config.Int("num_hidden_layers", 1, L::kLayers));
  MOEX_ASSIGN_OR_RETURN(dims.num_heads, config.Int("num_attention_heads", 1, L::kHeads));
  MOEX_ASSIGN_OR_RETURN(dims.num_kv_heads, config.IntOr("num_key_value_heads", 1, L::kHeads,
                                                        dims.num_heads, assumed));
  if (dims.num_heads % dims.num_kv_heads != 0) {
    return config.Invalid("num_key_value_heads",
                          StrCat("(", dims.num_kv_heads,
                                       ") must divide num_attention_heads (", dims.num_heads, ")"));
  }
  MOEX_ASSIGN_OR_RETURN(dims.tie_word_embeddings,
                        config.BoolOr("tie_word_embeddings", default_tie));
  if (!uses_head_dim) return dims;
  if (!config.Has("head_dim") && dims.hidden_size % dims.num_heads != 0) {
    return config.Invalid("head_dim", StrCat("is missing and hidden_size (", dims.hidden_size,
                                                   ") is not a multiple of num_attention_heads (",
                                                   dims.num_heads, ")"));
  }
  MOEX_ASSIGN_OR_RETURN(dims.head_dim, config.IntOr("head_dim", 1, L::kHeadDim,
                                                    dims.hidden_size / dims.num_heads, assumed));
  return dims;
}

void AddGqaAttention(const GqaAttention& a, LayerSpec* layer) {
  int64_t q_width = a.num_heads * a.head_dim;
  int64_t kv_width = a.num_kv_heads * a.head_dim;
  int64_t params = a.hidden_size * q_width + 2 * a.hidden_size * kv_width + q_width * a.hidden_size;
  if (a.qkv_bias) params += q_width + 2 * kv_width;
  if (a.o_bias) params += a.hidden_size;
  params += a.extra_params;
  layer->mixer = MixerKind::kAttention;
  layer->attention_params = params;
  layer->attention.num_heads = a.num_heads;
  layer->attention.qk_head_dim = a.head_dim;
  layer->attention.v_head_dim = a.head_dim;
  layer->attention.sliding_window = a.sliding_window;
  layer->attention.kv_cache_elems_per_token = 2 * kv_width;
}

int64_t GatedMlpParams(int64_t hidden, int64_t width, bool bias) {
  return 3 * hidden * width + (bias ? 2 * width + hidden : 0);
}

int64_t PlainMlpParams(int64_t hidden, int64_t width, bool bias) {
  return 2 * hidden * width + (bias ? width + hidden : 0);
}

void SetQwenFfn(const QwenFfn& f, bool moe, LayerSpec* layer) {
  if (!moe) {
    layer->ffn = FfnKind::kDense;
    layer->dense_mlp_params = GatedMlpParams(f.hidden, f.dense_width);
    return;
  }
  const int64_t shared = f.shared_width > 0 ? GatedMlpParams(f.hidden, f.shared_width) : 0;
  const int64_t router = f.num_experts * f.hidden + (f.shared_width > 0 ? f.hidden : 0);
  SetMoe(layer, f.num_experts, f.top_k, f.expert_width, GatedMlpParams(f.hidden, f.expert_width), shared, router);
  layer->moe.shared_intermediate_size = f.shared_width;
  layer->moe.shared_expert_gate = f.shared_width > 0;
}

void SetMoe(LayerSpec* layer, int64_t num_experts, int64_t experts_per_token, int64_t width,
            int64_t params_per_expert, int64_t shared_params, int64_t router_params) {
  layer->ffn = FfnKind::kMoe;
  layer->moe.num_experts = num_experts;
  layer->moe.experts_per_token = experts_per_token;
  layer->moe.expert_intermediate_size = width;
  layer->moe.params_per_expert = params_per_expert;
  layer->moe.shared_params = shared_params;
  layer->moe.router_params = router_params;
}

absl::Status CheckTopK(const ConfigView& config, std::string_view experts_key, int64_t experts,
                       std::string_view topk_key, int64_t top_k) {
  if (top_k > experts) {
    return config.Invalid(topk_key, StrCat("(", top_k, ") exceeds ", experts_key, " (",
                                                 experts, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExpertCounts> ReadExpertCounts(const ConfigView& config, std::string_view experts_key,
                                              std::string_view topk_key, std::string_view width_key) {
  using L = FieldLimits;
  ExpertCounts counts;
  MOEX_ASSIGN_OR_RETURN(counts.num_experts, config.Int(experts_key, 1, L::kExperts));
  MOEX_ASSIGN_OR_RETURN(counts.top_k, config.Int(topk_key, 1, L::kExperts));
  MOEX_RETURN_IF_ERROR(CheckTopK(config, experts_key, counts.num_experts, topk_key, counts.top_k));
  MOEX_ASSIGN_OR_RETURN(counts.width, config.Int(width_key, 1, L::kWidth));
  return counts;
}

absl::StatusOr<CommonDims> BeginDecoder(const ConfigView& config, std::string_view model_type,
                                        ModelArch* arch, bool uses_head_dim) {
  arch->model_type = std::string(model_type);
  MOEX_ASSIGN_OR_RETURN(CommonDims dims, ReadCommonDims(config, /*default_tie=*/false,
                                                        &arch->assumptions, uses_head_dim));
  SetEmbeddings(dims, arch);
  return dims;
}

void SetEmbeddings(const CommonDims& dims, ModelArch* arch) {
  arch->vocab_size = dims.vocab_size;
  arch->hidden_size = dims.hidden_size;
  arch->tie_word_embeddings = dims.tie_word_embeddings;
  arch->embedding_params = dims.vocab_size * dims.hidden_size;
  arch->lm_head_params = dims.tie_word_embeddings ? 0 : dims.vocab_size * dims.hidden_size;
  arch->final_norm_params = dims.hidden_size;
}

}  // namespace moex::model::blocks
