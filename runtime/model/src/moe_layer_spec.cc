#include "moex/model/moe_layer_spec.h"

#include <algorithm>
#include <vector>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::model {

namespace {

constexpr const char* kRunnable[] = {"deepseek_v2", "deepseek_v3", "kimi_k2", "deepseek_v4", "qwen2_moe", "qwen3_moe",
                                     "qwen3_next", "qwen3_5_moe", "mixtral", "olmoe", "jamba", "dbrx",
                                     "llama4", "llama4_text", "gpt_oss", "nemotron_h"};

// "1 to 5", "1, 3, ..., 47 (every 2nd layer)", or ranges: "0 to 2, 5 and 8 to 11".
std::string LayerList(const std::vector<int64_t>& layers) {
  if (layers.size() >= 3 && layers[1] - layers[0] > 1) {
    const int64_t step = layers[1] - layers[0];
    bool regular = true;
    for (size_t i = 1; i < layers.size(); ++i) regular &= layers[i] - layers[i - 1] == step;
    if (regular) {
      const int64_t tens = step % 100 / 10, ones = step % 10;
      const char* suffix = tens == 1 ? "th" : ones == 1 ? "st" : ones == 2 ? "nd" : ones == 3 ? "rd" : "th";
      return StrCat(layers[0], ", ", layers[1], ", ..., ", layers.back(), " (every ", step, suffix, " layer)");
    }
  }
  std::vector<std::string> parts;
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    parts.push_back(j - i >= 2 ? StrCat(layers[i], " to ", layers[j]) : StrCat(layers[i]));
    if (j - i == 1) parts.push_back(StrCat(layers[j]));
    i = j + 1;
  }
  std::string out;
  const size_t shown = std::min<size_t>(parts.size(), 12);
  for (size_t i = 0; i < shown; ++i) {
    out += i == 0 ? "" : (i + 1 == parts.size() ? " and " : ", ");
    out += parts[i];
  }
  if (shown < parts.size()) out += StrCat(", ... (", layers.size(), " in all)");
  return out;
}

}  // namespace

std::string MoeLayerList(const ModelArch& arch) {
  std::vector<int64_t> layers;
  for (size_t i = 0; i < arch.layers.size(); ++i) {
    if (arch.layers[i].ffn == FfnKind::kMoe) layers.push_back(static_cast<int64_t>(i));
  }
  return LayerList(layers);
}

absl::StatusOr<MoeLayerSpec> MoeLayerSpec::FromArch(const ModelArch& arch,
                                                    std::optional<int64_t> layer) {
  if (arch.num_moe_layers() == 0) {
    return absl::InvalidArgumentError(StrCat(arch.source, ": the model has no MoE layer (", arch.model_type,
                                             " is a dense model)"));
  }
  bool runnable = false;
  std::string runnable_list;
  for (const char* type : kRunnable) {
    runnable |= arch.model_type == type;
    runnable_list += StrCat(runnable_list.empty() ? "" : ", ", type);
  }
  if (!runnable) {
    return absl::UnimplementedError(StrCat(arch.source, ": model_type '", arch.model_type,
                                           "' is not runnable yet (moex run supports ", runnable_list,
                                           "); `moex plan` reads it"));
  }
  if (!arch.run_unsupported.empty()) {
    std::string fields;
    for (const std::string& f : arch.run_unsupported) fields += StrCat(fields.empty() ? "" : "; ", f);
    return absl::UnimplementedError(StrCat(arch.source, ": ", arch.model_type, " with ", fields,
                                           ": moex run does not implement this (`moex plan` reads it)"));
  }
  int64_t index = -1;
  if (layer) {
    if (*layer < 0 || *layer >= static_cast<int64_t>(arch.layers.size())) {
      return absl::InvalidArgumentError(StrCat(arch.source, ": --layer ", *layer, " is outside [0, ",
                                               arch.layers.size(), ")"));
    }
    if (arch.layers[*layer].ffn != FfnKind::kMoe) {
      const std::string moe_layers = MoeLayerList(arch);
      return absl::InvalidArgumentError(StrCat(arch.source, ": layer ", *layer, " is a dense layer",
                                               moe_layers.empty() ? "; the model has no MoE layer"
                                                                  : StrCat("; its MoE layers are ", moe_layers)));
    }
    index = *layer;
  } else {
    // The first MoE layer, past hash-routed ones (DeepSeek-V4's first layers).
    for (size_t i = 0; i < arch.layers.size() && index < 0; ++i) {
      if (arch.layers[i].ffn == FfnKind::kMoe && !arch.layers[i].moe.hash_routed) index = static_cast<int64_t>(i);
    }
    if (index < 0) return absl::InvalidArgumentError(StrCat(arch.source, ": the model has no MoE layer"));
  }
  const MoeShape& moe = arch.layers[index].moe;
  if (moe.hash_routed && arch.vocab_size < 1) {
    return absl::InvalidArgumentError(StrCat(arch.source, ": layer ", index,
                                             " is hash-routed (num_hash_layers) but the config has no vocab_size "
                                             "(the rows of its token-id table)"));
  }
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
  spec.mlp = arch.expert_mlp;
  spec.shared_mlp = arch.shared_mlp;
  if (moe.hash_routed) {
    // Experts from the token-id table: no correction bias (the release has
    // no gate.bias on these layers), scores only weigh.
    spec.hash_routed = true;
    spec.vocab_size = arch.vocab_size;
    spec.router.has_correction_bias = false;
  }
  if (spec.shared_mlp.biases) {
    return absl::UnimplementedError(StrCat(arch.source, ": a shared expert with biases is not implemented"));
  }
  if (moe.shared_params > 0 && spec.shared_width == 0) {
    return absl::UnimplementedError(StrCat(arch.source, ": layer ", index,
                                           " has shared experts whose width moex does not know"));
  }
  return spec;
}

namespace {

// Weights and biases of one expert MLP of `width`.
int64_t MlpParams(const ExpertMlpSpec& mlp, int64_t hidden, int64_t width) {
  const int64_t matrices = mlp.gated() ? 3 : 2;
  return matrices * hidden * width + (mlp.biases ? (mlp.gated() ? 2 : 1) * width + hidden : 0);
}

}  // namespace

int64_t MoeLayerSpec::total_params() const {
  return num_experts * MlpParams(mlp, hidden, expert_width) +
         (shared_width > 0 ? MlpParams(shared_mlp, hidden, shared_width) : 0) + num_experts * hidden +
         (router.has_correction_bias ? num_experts : 0) + (router.has_bias ? num_experts : 0) +
         (shared_expert_gate ? hidden : 0);
}

int64_t MoeLayerSpec::active_params() const {
  return total_params() - (num_experts - top_k) * MlpParams(mlp, hidden, expert_width);
}

namespace {

// Where a family keeps a MoE block's tensors: <root><layer>.<block>...
struct FamilyNames {
  std::string_view model_type;
  std::string_view root = "model.layers.";
  std::string_view block = "mlp.";
  std::string_view router = "gate";  // <router>.weight, .bias, .<correction>
  std::string_view correction = "e_score_correction_bias";
  std::string_view experts = "experts.";
  std::string_view shared = "shared_experts.";
  ExpertLayout layout = ExpertLayout::kPerExpert;
  std::string_view other_root = "";  // multimodal checkpoints' root of the text model
  bool w_names = false;  // w1 (gate), w3 (up), w2 (down): Mixtral's experts, DeepSeek-V4's all
};

constexpr FamilyNames kFamilies[] = {
    {.model_type = "deepseek_v2"},
    {.model_type = "deepseek_v3"},
    {.model_type = "kimi_k2"},
    // DeepSeek-V4's own names (its release is not in transformers' layout).
    {.model_type = "deepseek_v4", .root = "layers.", .block = "ffn.", .correction = "bias", .w_names = true},
    {.model_type = "olmoe"},
    {.model_type = "qwen2_moe", .shared = "shared_expert."},
    {.model_type = "qwen3_moe", .shared = "shared_expert."},
    {.model_type = "qwen3_next", .shared = "shared_expert."},
    {.model_type = "qwen3_5_moe", .shared = "shared_expert.", .other_root = "model.language_model.layers."},
    {.model_type = "mixtral", .block = "block_sparse_moe.", .w_names = true},
    {.model_type = "jamba", .block = "feed_forward.", .router = "router"},
    {.model_type = "dbrx", .root = "transformer.blocks.", .block = "ffn.", .router = "router.layer",
     .experts = "experts.mlp.", .layout = ExpertLayout::kDbrx},
    {.model_type = "llama4", .block = "feed_forward.", .router = "router", .shared = "shared_expert.",
     .layout = ExpertLayout::kFusedGateUp, .other_root = "language_model.model.layers."},
    {.model_type = "llama4_text", .block = "feed_forward.", .router = "router", .shared = "shared_expert.",
     .layout = ExpertLayout::kFusedGateUp, .other_root = "language_model.model.layers."},
    {.model_type = "gpt_oss", .router = "router", .layout = ExpertLayout::kFusedInterleaved},
    {.model_type = "nemotron_h", .root = "backbone.layers.", .block = "mixer."},
};

MoeWeightNames NamesUnder(const FamilyNames& family, std::string_view root, int64_t layer) {
  MoeWeightNames names;
  const std::string block = StrCat(root, layer, ".", family.block);
  names.layout = family.layout;
  names.router = StrCat(block, family.router, ".weight");
  names.router_bias = StrCat(block, family.router, ".bias");
  names.correction_bias = StrCat(block, family.router, ".", family.correction);
  names.expert_prefix = StrCat(block, family.experts);
  names.shared_prefix = StrCat(block, family.shared);
  names.shared_gate = block + "shared_expert_gate.weight";
  names.token_table = StrCat(block, family.router, ".tid2eid");
  names.mixtral_names = family.w_names;
  names.shared_w_names = family.w_names && family.model_type != "mixtral";
  return names;
}

}  // namespace

std::string MoeWeightNames::Expert(int64_t expert, std::string_view projection) const {
  if (layout != ExpertLayout::kPerExpert) return StrCat(expert_prefix, expert, ".", projection, "[stacked]");
  if (mixtral_names) {
    std::string_view w = projection == "gate" ? "w1" : projection == "up" ? "w3" : "w2";
    return StrCat(expert_prefix, expert, ".", w, ".weight");
  }
  return StrCat(expert_prefix, expert, ".", projection, "_proj.weight");
}

std::string MoeWeightNames::Stacked(std::string_view tensor) const {
  if (layout == ExpertLayout::kDbrx) return StrCat(expert_prefix, tensor);
  // gpt-oss's MXFP4 tensors add _blocks/_scales to this name (the reader's
  // convention for a name without ".weight").
  return StrCat(expert_prefix, tensor, "_proj");
}

std::string MoeWeightNames::StackedBias(std::string_view tensor) const {
  return StrCat(expert_prefix, tensor, "_proj_bias");
}

std::string MoeWeightNames::Shared(std::string_view projection) const {
  if (shared_w_names) {
    return StrCat(shared_prefix, projection == "gate" ? "w1" : projection == "up" ? "w3" : "w2", ".weight");
  }
  return StrCat(shared_prefix, projection, "_proj.weight");
}

std::string MoeWeightNames::FormatTensor(bool gated) const {
  switch (layout) {
    case ExpertLayout::kPerExpert: return Expert(0, gated ? "gate" : "up");
    case ExpertLayout::kFusedGateUp:
    case ExpertLayout::kFusedInterleaved:
    case ExpertLayout::kStackedRows: return Stacked("gate_up");
    case ExpertLayout::kDbrx: return Stacked("w1");
  }
  return "";
}

MoeWeightNames WeightNamesFor(const MoeLayerSpec& spec, const Checkpoint* checkpoint) {
  const FamilyNames* family = &kFamilies[0];
  for (const FamilyNames& f : kFamilies) {
    if (f.model_type == spec.model_type) family = &f;
  }
  MoeWeightNames names = NamesUnder(*family, family->root, spec.layer);
  if (checkpoint != nullptr && !family->other_root.empty() && !checkpoint->Has(names.router)) {
    MoeWeightNames other = NamesUnder(*family, family->other_root, spec.layer);
    if (checkpoint->Has(other.router)) names = std::move(other);
  }
  // Qwen3.5 releases stack their experts ([out, in], gate rows first);
  // per-expert tensors are read where a checkpoint has them instead.
  if (family->model_type == "qwen3_5_moe" && checkpoint != nullptr) {
    MoeWeightNames stacked = names;
    stacked.layout = ExpertLayout::kStackedRows;
    if (checkpoint->Has(stacked.Stacked("gate_up")) || checkpoint->Has(stacked.Stacked("gate_up") + "_blocks")) {
      return stacked;
    }
  }
  return names;
}

}  // namespace moex::model
