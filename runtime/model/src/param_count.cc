#include "moex/model/param_count.h"

namespace moex::model {
namespace {

void Add(std::array<PartCount, kNumParts>* parts, Part part, int64_t total, int64_t active) {
  (*parts)[static_cast<int>(part)].total += total;
  (*parts)[static_cast<int>(part)].active += active;
}

}  // namespace

void AddLayerParams(const LayerSpec& layer, std::array<PartCount, kNumParts>* parts) {
  Add(parts, Part::kAttention, layer.attention_params, layer.attention_params);
  Add(parts, Part::kMamba, layer.mamba_params, layer.mamba_params);
  Add(parts, Part::kDenseMlp, layer.dense_mlp_params, layer.dense_mlp_params);
  Add(parts, Part::kNorms, layer.norm_params, layer.norm_params);
  Add(parts, Part::kOther, layer.other_params, layer.other_params);
  if (layer.ffn == FfnKind::kMoe) {
    const MoeShape& moe = layer.moe;
    Add(parts, Part::kRoutedExperts, moe.num_experts * moe.params_per_expert,
        moe.experts_per_token * moe.params_per_expert);
    Add(parts, Part::kSharedExperts, moe.shared_params, moe.shared_params);
    Add(parts, Part::kRouter, moe.router_params, moe.router_params);
  }
}

ParamCount CountParams(const ModelArch& arch) {
  ParamCount count;
  Add(&count.parts, Part::kEmbedding, arch.embedding_params, arch.embedding_params);
  Add(&count.parts, Part::kLmHead, arch.lm_head_params, arch.lm_head_params);
  Add(&count.parts, Part::kNorms, arch.final_norm_params, arch.final_norm_params);
  Add(&count.parts, Part::kVision, arch.vision_params, 0);
  for (const LayerSpec& layer : arch.layers) AddLayerParams(layer, &count.parts);
  for (const PartCount& part : count.parts) {
    count.total += part.total;
    count.active += part.active;
  }
  count.active_excl_embedding = count.active - arch.embedding_params;

  std::array<PartCount, kNumParts> mtp_parts{};
  for (const LayerSpec& layer : arch.mtp_layers) AddLayerParams(layer, &mtp_parts);
  count.mtp.total = arch.mtp_extra_params;
  count.mtp.active = arch.mtp_layers.empty() ? 0 : arch.mtp_extra_params;
  for (const PartCount& part : mtp_parts) {
    count.mtp.total += part.total;
    count.mtp.active += part.active;
  }
  return count;
}

}  // namespace moex::model
