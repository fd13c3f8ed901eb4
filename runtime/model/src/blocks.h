// Parameter formulas for the building blocks that families share.
// Internal to the model layer. Every count is weights plus biases; shapes
// are written as [out, in] the way the checkpoints store them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"
#include "moex/model/config_view.h"

namespace moex::model::blocks {

// Fields nearly every decoder config has, read with the same bounds.
struct CommonDims {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // defaults to num_heads (MHA)
  int64_t head_dim = 0;      // defaults to hidden_size / num_heads
  bool tie_word_embeddings = false;
};

// Reads vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
// num_key_value_heads, head_dim and tie_word_embeddings. MLA models
// (`uses_head_dim` false) derive head sizes from their own fields.
absl::StatusOr<CommonDims> ReadCommonDims(const ConfigView& config, bool default_tie,
                                          std::vector<std::string>* assumed,
                                          bool uses_head_dim = true);

// Grouped-query attention: q [heads*d, H], k and v [kv*d, H], o [H, heads*d].
struct GqaAttention {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool qkv_bias = false;
  bool o_bias = false;
  int64_t extra_params = 0;  // q/k norms, attention sinks
  int64_t sliding_window = 0;
};
void AddGqaAttention(const GqaAttention& attention, LayerSpec* layer);

// gate and up [F, H], down [H, F]; biases [F], [F], [H] when `bias`.
int64_t GatedMlpParams(int64_t hidden, int64_t width, bool bias = false);
// up [F, H], down [H, F] (squared-ReLU MLPs of Nemotron-H).
int64_t PlainMlpParams(int64_t hidden, int64_t width, bool bias = false);

// Makes `layer` an MoE layer.
void SetMoe(LayerSpec* layer, int64_t num_experts, int64_t experts_per_token, int64_t width,
            int64_t params_per_expert, int64_t shared_params, int64_t router_params);

// The Qwen MoE block's feed-forward (Qwen2-MoE, Qwen3-MoE, Qwen3-Next,
// Qwen3.5): a MoE layer unless `dense_only` or off the sparse step, with
// an optional shared expert behind a sigmoid gate [1, H] (counted with the
// router); otherwise a dense gated MLP of `dense_width`.
struct QwenFfn {
  int64_t hidden = 0, num_experts = 0, top_k = 0, expert_width = 0, shared_width = 0, dense_width = 0;
};
void SetQwenFfn(const QwenFfn& ffn, bool moe, LayerSpec* layer);

// Validates top-k against the expert count, naming the fields.
absl::Status CheckTopK(const ConfigView& config, std::string_view experts_key, int64_t experts,
                       std::string_view topk_key, int64_t top_k);

// The routed experts of an MoE block: their count, top-k and width, read
// under the family's own field names, top-k checked against the count.
struct ExpertCounts {
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t width = 0;
};
absl::StatusOr<ExpertCounts> ReadExpertCounts(const ConfigView& config, std::string_view experts_key,
                                              std::string_view topk_key, std::string_view width_key);

// Starts `arch` as a decoder of `model_type`: reads the common dimensions and
// sets the embedding, LM head and final norm.
absl::StatusOr<CommonDims> BeginDecoder(const ConfigView& config, std::string_view model_type,
                                        ModelArch* arch, bool uses_head_dim = true);

// The embedding, LM head and final norm of a decoder.
void SetEmbeddings(const CommonDims& dims, ModelArch* arch);

}  // namespace moex::model::blocks
