// A model's architecture, normalised from its config.json.
//
// Each family reader (families/*.cc) turns one `model_type` into a
// ModelArch: a list of layers, each with a token mixer (attention or a state
// space model) and a feed-forward block (dense MLP or MoE), with the
// parameter count of every part already computed from the config's fields.
// The planner and, later, the runtime read only this struct, never the JSON.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moex::model {

// The parts a parameter belongs to. Their names are the keys of the plan's
// `breakdown` object.
enum class Part : int {
  kEmbedding = 0,
  kLmHead,
  kAttention,
  kMamba,          // state-space mixers (Jamba, Nemotron-H)
  kDenseMlp,
  kRoutedExperts,
  kSharedExperts,
  kRouter,         // gate weights, correction biases, shared-expert gates
  kNorms,
  kVision,         // a vision encoder and its projector (Llama 4)
  kOther,
};
inline constexpr int kNumParts = 11;
std::string_view PartName(Part part);

enum class MixerKind { kNone, kAttention, kMamba };
enum class FfnKind { kNone, kDense, kMoe };

// What a layer's attention costs per token beyond its weights.
struct AttentionShape {
  int64_t num_heads = 0;
  int64_t qk_head_dim = 0;   // dims per head that enter the q.k dot product
  int64_t v_head_dim = 0;    // dims per head of the value vectors
  int64_t sliding_window = 0;  // 0: attends to the whole context
  // Elements cached per token for this layer (MLA: latent + rope key; GQA:
  // 2 * kv_heads * head_dim).
  int64_t kv_cache_elems_per_token = 0;
};

// One MoE block.
struct MoeShape {
  int64_t num_experts = 0;            // routed experts
  int64_t experts_per_token = 0;      // top-k
  int64_t expert_intermediate_size = 0;
  int64_t params_per_expert = 0;      // weights and biases of one routed expert
  int64_t shared_params = 0;          // all shared experts of the block
  int64_t shared_intermediate_size = 0;  // width of the shared experts fused into one MLP
  bool shared_expert_gate = false;    // Qwen2-MoE's sigmoid gate on the shared expert
  bool hash_routed = false;           // DeepSeek-V4: experts from a token-id table
  int64_t router_params = 0;          // gate (+ correction bias, shared-expert gate)
};

struct LayerSpec {
  MixerKind mixer = MixerKind::kNone;
  FfnKind ffn = FfnKind::kNone;
  int64_t attention_params = 0;
  int64_t mamba_params = 0;
  int64_t dense_mlp_params = 0;
  int64_t norm_params = 0;
  int64_t other_params = 0;
  AttentionShape attention;
  // Non-GEMM FLOPs per token of a state-space mixer (the selective scan).
  int64_t mamba_scan_flops_per_token = 0;
  MoeShape moe;
};

// How tokens choose experts; the runtime's router follows it.
struct RouterSpec {
  std::string scoring = "softmax";  // "softmax", "sigmoid" or "sqrtsoftplus"
  bool norm_topk_prob = false;      // renormalise the chosen k weights
  int64_t num_groups = 1;           // group-limited routing (DeepSeek-V3)
  int64_t topk_groups = 1;
  double routed_scaling_factor = 1.0;
  bool has_correction_bias = false;  // e_score_correction_bias
  bool has_bias = false;             // a bias added to the logits (gpt-oss)
  // The routing weight scales the expert's input, not its output (Llama 4).
  bool weight_on_input = false;
};

// An expert MLP's activation as the family's modeling code applies it.
enum class ExpertActivation {
  kSilu,       // down(silu(gate x) * up x)
  kSwigluOai,  // gpt-oss: g = min(gate x, limit), u = clamp(up x, +-limit),
               // down((u + 1) * g * sigmoid(alpha g))
  kRelu2,      // not gated: down(relu(up x)^2) (Nemotron-H)
};
std::string_view ExpertActivationName(ExpertActivation activation);

struct ExpertMlpSpec {
  ExpertActivation activation = ExpertActivation::kSilu;
  double swiglu_alpha = 1.702;  // kSwigluOai
  // kSwigluOai: its clamp. kSilu: 0, or DeepSeek-V4's clamp (gate x at most
  // the limit, up x within +-limit, before silu(g) * u).
  double swiglu_limit = 0;
  bool biases = false;  // gate, up and down carry biases (gpt-oss)
  bool gated() const { return activation != ExpertActivation::kRelu2; }
};

// How config.json says the checkpoint stores its weights. Read for every
// config, whatever its family; all empty when the config does not say (the
// presets, which keep architecture fields only). The planner turns it into a
// dtype (plan::DtypeFromConfig).
struct StoredDtype {
  bool quantized = false;                  // a `quantization_config` object is present
  std::string quant_method;                // its `quant_method`, e.g. "fp8", "mxfp4"
  std::string quant_format;                // its `fmt`, e.g. "e4m3"
  std::vector<int64_t> weight_block_size;  // its `weight_block_size`, e.g. {128, 128}
  std::string expert_dtype;                // `expert_dtype` ("fp4": DeepSeek-V4's routed experts)
  std::string dtype;                       // "bfloat16", "float16", "float32", ...
  std::string dtype_field;                 // "torch_dtype", or "dtype" (newer transformers)
};

struct ModelArch {
  std::string model_type;
  std::string source;  // preset name or file path
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  bool tie_word_embeddings = false;

  int64_t embedding_params = 0;
  int64_t lm_head_params = 0;  // 0 when tied to the embedding
  int64_t final_norm_params = 0;
  int64_t vision_params = 0;   // counted in the total, inactive for text tokens

  std::vector<LayerSpec> layers;

  // Multi-token-prediction modules (DeepSeek-V3): reported apart, not in the
  // total, as the model cards do. mtp_extra_params holds their projections
  // and norms beyond the transformer layer itself.
  std::vector<LayerSpec> mtp_layers;
  int64_t mtp_extra_params = 0;

  RouterSpec router;
  std::string expert_activation = "silu";
  ExpertMlpSpec expert_mlp;  // routed experts
  ExpertMlpSpec shared_mlp;  // shared experts
  StoredDtype stored;

  // Field defaults that were applied, and parts the config defines but the
  // reader cannot count. Both are shown to the user: no silent guess.
  std::vector<std::string> assumptions;
  std::vector<std::string> uncounted;
  // Config fields that change the MoE layer's maths in a way `moex run` does
  // not implement: it refuses the model naming them (`moex plan` still
  // reads it).
  std::vector<std::string> run_unsupported;

  int64_t num_moe_layers() const;
  int64_t num_dense_layers() const;  // layers whose FFN is a dense MLP or absent
  // The first MoE layer's shape, or an all-zero one for a dense model.
  MoeShape first_moe() const;
};

}  // namespace moex::model
