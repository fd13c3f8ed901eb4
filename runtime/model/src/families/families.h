// One reader per model family: config.json fields in, ModelArch out.
// Internal to the model layer; the public entry point is model_loader.h.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"
#include "moex/model/config_view.h"

namespace moex::model::families {

// deepseek_v2, deepseek_v3, kimi_k2: MLA attention, shared experts,
// first_k_dense_replace, MTP modules.
absl::StatusOr<ModelArch> ReadDeepseek(const ConfigView& config, std::string_view model_type);
// deepseek_v4: counts what its fields define, lists what it cannot.
absl::StatusOr<ModelArch> ReadDeepseekV4(const ConfigView& config);
// qwen2_moe, qwen3_moe.
absl::StatusOr<ModelArch> ReadQwenMoe(const ConfigView& config, std::string_view model_type);
// qwen3_next, qwen3_5_moe (text model in text_config): Gated DeltaNet and
// gated attention layers, many experts, a gated shared expert.
absl::StatusOr<ModelArch> ReadQwen3Next(const ConfigView& config, std::string_view model_type);
absl::StatusOr<ModelArch> ReadMixtral(const ConfigView& config);
// llama4 (nested text_config and vision_config) and llama4_text.
absl::StatusOr<ModelArch> ReadLlama4(const ConfigView& config, std::string_view model_type);
absl::StatusOr<ModelArch> ReadGptOss(const ConfigView& config);
absl::StatusOr<ModelArch> ReadOlmoe(const ConfigView& config);
absl::StatusOr<ModelArch> ReadDbrx(const ConfigView& config);
absl::StatusOr<ModelArch> ReadJamba(const ConfigView& config);
absl::StatusOr<ModelArch> ReadNemotronH(const ConfigView& config);
// Dense decoders: llama, mistral, qwen2, qwen3.
absl::StatusOr<ModelArch> ReadDense(const ConfigView& config, std::string_view model_type);

}  // namespace moex::model::families
