// Entry point of the model layer: a preset name or a config.json in, a
// ModelArch out, or an error that names the file, the field, or the line and
// column of a syntax error.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"
#include "nlohmann/json.hpp"

namespace moex::model {

// The model_type values moex can read, sorted.
std::vector<std::string> SupportedModelTypes();

// Reads a parsed config.json. `source` names it in messages.
absl::StatusOr<ModelArch> ParseModelConfig(const nlohmann::json& config, std::string_view source);

// `model` is a preset name, a path to a config.json, or a directory that
// holds one (a Hugging Face snapshot).
absl::StatusOr<ModelArch> LoadModel(std::string_view model);

}  // namespace moex::model
