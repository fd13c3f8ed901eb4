#include "moex/model/moe_layer_spec.h"

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::model {

absl::StatusOr<MoeLayerSpec> MoeLayerSpec::FromArch(const ModelArch& arch,
                                                    std::optional<int64_t> layer) {
  static const char* const kRunnable[] = {"deepseek_v2", "deepseek_v3", "kimi_k2", "qwen2_moe",
                                          "qwen3_moe", "mixtral", "olmoe"};
  bool runnable = false;
  for (const char* type : kRunnable) runnable |= arch.model_type == type;
  if (!runnable) {
    return absl::UnimplementedError(StrCat(
        arch.source, ": model_type '", arch.model_type,
        "' is not runnable yet (moex run supports deepseek_v2, deepseek_v3, kimi_k2, qwen2_moe, "
        "qwen3_moe, mixtral, olmoe); `moex plan` reads it"));
  }
  int64_t index = -1;
  if (layer) {
    if (*layer < 0 || *layer >= static_cast<int64_t>(arch.layers.size())) {
      return absl::InvalidArgumentError(StrCat(arch.source, ": --layer ", *layer, " is outside [0, ",
                                               arch.layers.size(), ")"));
    }
    if (arch.layers[*layer].ffn != FfnKind::kMoe) {
      std::string moe_layers;
      for (size_t i = 0; i < arch.layers.size(); ++i) {
        if (arch.layers[i].ffn == FfnKind::kMoe) {
          moe_layers = StrCat("; its MoE layers are ", i, " to ", arch.layers.size() - 1);
          break;
        }
      }
      return absl::InvalidArgumentError(StrCat(arch.source, ": layer ", *layer, " is a dense layer",
                                               moe_layers.empty() ? "; the model has no MoE layer" : moe_layers));
    }
    index = *layer;
  } else {
    for (size_t i = 0; i < arch.layers.size() && index < 0; ++i) {
      if (arch.layers[i].ffn == FfnKind::kMoe) index = static_cast<int64_t>(i);
    }
    if (index < 0) return absl::InvalidArgumentError(StrCat(arch.source, ": the model has no MoE layer"));
  }
  const MoeShape& moe = arch.layers[index].moe;
  MoeLayerSpec spec;
  spec.model_type = arch.model_type;
  spec.layer = index;
  spec.hidden = arch.hidden_size;
  spec.num_experts = moe.num_experts;
  spec.top_k = moe.experts_per_token;
  spec.expert_width = moe.expert_intermediate_size;
  spec.shared_width = moe.shared_intermediate_size;
  spec.shared_expert_gate = moe.shared_expert_gate;
  spec.router = arch.router;
  if (arch.expert_activation != "silu") {
    return absl::UnimplementedError(StrCat(arch.source, ": expert activation '",
                                           arch.expert_activation, "' is not implemented (silu is)"));
  }
  return spec;
}

int64_t MoeLayerSpec::total_params() const {
  int64_t per_expert = 3 * hidden * expert_width;
  return num_experts * per_expert + 3 * hidden * shared_width + num_experts * hidden +
         (router.has_correction_bias ? num_experts : 0) + (shared_expert_gate ? hidden : 0);
}

int64_t MoeLayerSpec::active_params() const {
  return total_params() - (num_experts - top_k) * 3 * hidden * expert_width;
}

std::string MoeWeightNames::Expert(int64_t expert, std::string_view projection) const {
  if (mixtral_names) {
    std::string_view w = projection == "gate" ? "w1" : projection == "up" ? "w3" : "w2";
    return StrCat(expert_prefix, expert, ".", w, ".weight");
  }
  return StrCat(expert_prefix, expert, ".", projection, "_proj.weight");
}

std::string MoeWeightNames::Shared(std::string_view projection) const {
  return StrCat(shared_prefix, projection, "_proj.weight");
}

MoeWeightNames WeightNamesFor(const MoeLayerSpec& spec) {
  MoeWeightNames names;
  std::string block = StrCat("model.layers.", spec.layer, spec.model_type == "mixtral" ? ".block_sparse_moe." : ".mlp.");
  names.router = block + "gate.weight";
  names.correction_bias = block + "gate.e_score_correction_bias";
  names.expert_prefix = block + "experts.";
  names.mixtral_names = spec.model_type == "mixtral";
  names.shared_prefix = block + (spec.model_type == "qwen2_moe" ? "shared_expert." : "shared_experts.");
  names.shared_gate = block + "shared_expert_gate.weight";
  return names;
}

}  // namespace moex::model
