#include "moex/model/presets.h"

#include <algorithm>

#include "presets_data.h"

namespace moex::model {

const std::vector<Preset>& AllPresets() {
  static const auto* presets = [] {
    auto* list = new std::vector<Preset>();
    for (const PresetData& data : kPresetData) list->push_back({data.name, data.config_json});
    std::sort(list->begin(), list->end(),
              [](const Preset& a, const Preset& b) { return a.name < b.name; });
    return list;
  }();
  return *presets;
}

std::optional<Preset> FindPreset(std::string_view name) {
  for (const Preset& preset : AllPresets()) {
    if (preset.name == name) return preset;
  }
  return std::nullopt;
}

}  // namespace moex::model
