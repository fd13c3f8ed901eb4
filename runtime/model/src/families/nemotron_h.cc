// Nemotron-H (and Nemotron 3 MoE): one block per layer, chosen by a
// character of `hybrid_override_pattern`: M = Mamba-2, * = attention,
// - = squared-ReLU MLP, E = MoE of squared-ReLU experts with a shared expert.
#include "moex/core/str_cat.h"
#include "blocks.h"
#include "families.h"
#include "moex/core/status_macros.h"

namespace moex::model::families {

absl::StatusOr<ModelArch> ReadNemotronH(const ConfigView& config) {
  using L = FieldLimits;
  ModelArch arch;
  arch.model_type = "nemotron_h";
  arch.expert_activation = "relu2";
  arch.expert_mlp.activation = ExpertActivation::kRelu2;
  arch.shared_mlp.activation = ExpertActivation::kRelu2;
  MOEX_ASSIGN_OR_RETURN(blocks::CommonDims dims,
                        blocks::ReadCommonDims(config, /*default_tie=*/false, &arch.assumptions));
  blocks::SetEmbeddings(dims, &arch);
  MOEX_ASSIGN_OR_RETURN(std::string pattern, config.String("hybrid_override_pattern"));
  if (static_cast<int64_t>(pattern.size()) != dims.num_layers) {
    return config.Invalid("hybrid_override_pattern",
                          StrCat("has ", pattern.size(), " characters but num_hidden_layers is ",
                                       dims.num_layers));
  }
  MOEX_ASSIGN_OR_RETURN(bool mlp_bias, config.BoolOr("mlp_bias", false));
  if (mlp_bias) arch.run_unsupported.push_back("mlp_bias: experts with biases in Nemotron-H's layout");
  MOEX_ASSIGN_OR_RETURN(bool attention_bias, config.BoolOr("attention_bias", false));
  bool has_dense = pattern.find('-') != std::string::npos;
  bool has_moe = pattern.find('E') != std::string::npos;
  bool has_mamba = pattern.find('M') != std::string::npos;

  int64_t dense_width = 0;
  if (has_dense) {
    MOEX_ASSIGN_OR_RETURN(dense_width, config.Int("intermediate_size", 1, L::kWidth));
  }

  int64_t mamba = 0, scan_flops = 0;
  if (has_mamba) {
    MOEX_ASSIGN_OR_RETURN(int64_t heads, config.Int("mamba_num_heads", 1, L::kHeads));
    MOEX_ASSIGN_OR_RETURN(int64_t head_dim, config.Int("mamba_head_dim", 1, L::kHeadDim));
    MOEX_ASSIGN_OR_RETURN(int64_t d_state, config.Int("ssm_state_size", 1, L::kSmall));
    MOEX_ASSIGN_OR_RETURN(int64_t groups, config.Int("n_groups", 1, L::kSmall));
    MOEX_ASSIGN_OR_RETURN(int64_t kernel, config.Int("conv_kernel", 1, L::kSmall));
    MOEX_ASSIGN_OR_RETURN(bool conv_bias, config.BoolOr("use_conv_bias", true));
    MOEX_ASSIGN_OR_RETURN(bool proj_bias, config.BoolOr("mamba_proj_bias", false));
    int64_t d_inner = heads * head_dim;
    int64_t conv_dim = d_inner + 2 * groups * d_state;
    int64_t in_width = 2 * d_inner + 2 * groups * d_state + heads;  // z, x, B, C, dt
    mamba = dims.hidden_size * in_width + (proj_bias ? in_width : 0)        // in_proj
            + conv_dim * kernel + (conv_bias ? conv_dim : 0)               // conv1d
            + 3 * heads                                                    // dt_bias, A_log, D
            + d_inner                                                      // gated RMSNorm
            + d_inner * dims.hidden_size + (proj_bias ? dims.hidden_size : 0);  // out_proj
    scan_flops = 6 * d_inner * d_state;
  }

  int64_t num_experts = 0, top_k = 0, expert_width = 0, shared_params = 0, shared_total_width = 0;
  if (has_moe) {
    MOEX_ASSIGN_OR_RETURN(num_experts, config.Int("n_routed_experts", 1, L::kExperts));
    MOEX_ASSIGN_OR_RETURN(top_k, config.Int("num_experts_per_tok", 1, L::kExperts));
    MOEX_RETURN_IF_ERROR(blocks::CheckTopK(config, "n_routed_experts", num_experts, "num_experts_per_tok", top_k));
    MOEX_ASSIGN_OR_RETURN(expert_width, config.Int("moe_intermediate_size", 1, L::kWidth));
    MOEX_ASSIGN_OR_RETURN(int64_t shared, config.IntOr("n_shared_experts", 0, L::kExperts, 0));
    if (shared > 0) {
      MOEX_ASSIGN_OR_RETURN(int64_t shared_width,
                            config.Int("moe_shared_expert_intermediate_size", 1, L::kWidth));
      shared_params = shared * blocks::PlainMlpParams(dims.hidden_size, shared_width, mlp_bias);
      shared_total_width = shared * shared_width;  // relu^2 MLPs side by side are one wider MLP
    }
    arch.router.scoring = "sigmoid";
    arch.router.has_correction_bias = true;
    MOEX_ASSIGN_OR_RETURN(arch.router.norm_topk_prob, config.BoolOr("norm_topk_prob", false));
    MOEX_ASSIGN_OR_RETURN(arch.router.num_groups, config.IntOr("n_group", 1, L::kExperts, 1));
    MOEX_ASSIGN_OR_RETURN(arch.router.topk_groups, config.IntOr("topk_group", 1, L::kExperts, 1));
    MOEX_ASSIGN_OR_RETURN(arch.router.routed_scaling_factor, config.DoubleOr("routed_scaling_factor", 1.0));
  }

  for (int64_t i = 0; i < dims.num_layers; ++i) {
    LayerSpec layer;
    layer.norm_params = dims.hidden_size;  // one pre-norm per block
    switch (pattern[i]) {
      case 'M':
        layer.mixer = MixerKind::kMamba;
        layer.mamba_params = mamba;
        layer.mamba_scan_flops_per_token = scan_flops;
        break;
      case '*':
        blocks::AddGqaAttention({.hidden_size = dims.hidden_size,
                                 .num_heads = dims.num_heads,
                                 .num_kv_heads = dims.num_kv_heads,
                                 .head_dim = dims.head_dim,
                                 .qkv_bias = attention_bias,
                                 .o_bias = attention_bias},
                                &layer);
        break;
      case '-':
        layer.ffn = FfnKind::kDense;
        layer.dense_mlp_params = blocks::PlainMlpParams(dims.hidden_size, dense_width, mlp_bias);
        break;
      case 'E':
        blocks::SetMoe(&layer, num_experts, top_k, expert_width,
                       blocks::PlainMlpParams(dims.hidden_size, expert_width, mlp_bias),
                       shared_params, num_experts * dims.hidden_size + num_experts);
        layer.moe.shared_intermediate_size = shared_total_width;
        break;
      default:
        return config.Invalid("hybrid_override_pattern",
                              StrCat("has '", std::string(1, pattern[i]), "' at layer ", i,
                                           "; known: M (Mamba-2), * (attention), - (MLP), E (MoE)"));
    }
    arch.layers.push_back(layer);
  }
  return arch;
}

}  // namespace moex::model::families
