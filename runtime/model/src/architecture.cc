#include "moex/model/architecture.h"

namespace moex::model {

std::string_view PartName(Part part) {
  static constexpr std::array<std::string_view, kNumParts> kNames = {
      "embedding", "lm_head", "attention", "mamba", "dense_mlp", "routed_experts",
      "shared_experts", "router", "norms", "vision", "other"};
  return kNames[static_cast<int>(part)];
}

std::string_view ExpertActivationName(ExpertActivation activation) {
  switch (activation) {
    case ExpertActivation::kSilu: return "silu";
    case ExpertActivation::kSwigluOai: return "swiglu_clamped";
    case ExpertActivation::kRelu2: return "relu2";
  }
  return "?";
}

int64_t ModelArch::num_moe_layers() const {
  int64_t count = 0;
  for (const LayerSpec& layer : layers) count += layer.ffn == FfnKind::kMoe ? 1 : 0;
  return count;
}

int64_t ModelArch::num_dense_layers() const {
  return static_cast<int64_t>(layers.size()) - num_moe_layers();
}

MoeShape ModelArch::first_moe() const {
  for (const LayerSpec& layer : layers) {
    if (layer.ffn == FfnKind::kMoe) return layer.moe;
  }
  return MoeShape{};
}

}  // namespace moex::model
