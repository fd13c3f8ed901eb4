// Built-in models. A preset is a model's config.json, architecture fields
// only, embedded at build time from runtime/model/presets/<name>.json and
// read through the same parser as a user's file.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace moex::model {

struct Preset {
  std::string_view name;         // e.g. "deepseek-v3"
  std::string_view config_json;  // the config.json text
};

// All presets, sorted by name.
const std::vector<Preset>& AllPresets();
std::optional<Preset> FindPreset(std::string_view name);

// The model `moex plan` and the quick start use when none is named.
inline constexpr std::string_view kDefaultModel = "deepseek-v3";

}  // namespace moex::model
