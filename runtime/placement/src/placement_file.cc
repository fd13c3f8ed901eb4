#include "moex/placement/placement_file.h"

#include "moex/core/str_cat.h"

namespace moex::placement {

absl::StatusOr<IndexMatrix> ParsePlacementFile(const nlohmann::json& j, std::string_view source) {
  if (!j.is_object() || !j.contains("layers") || !j.at("layers").is_array()) {
    return absl::InvalidArgumentError(StrCat(source, ": field 'layers' must be a list"));
  }
  const nlohmann::json& layers = j.at("layers");
  IndexMatrix current;
  for (size_t l = 0; l < layers.size(); ++l) {
    const nlohmann::json& layer = layers[l];
    if (!layer.is_object() || !layer.contains("phy2log") || !layer.at("phy2log").is_array()) {
      return absl::InvalidArgumentError(StrCat(source, ": layers[", l, "].phy2log must be a list"));
    }
    const nlohmann::json& slots = layer.at("phy2log");
    current.emplace_back();
    for (size_t s = 0; s < slots.size(); ++s) {
      if (!slots[s].is_number_integer() || slots[s].get<int64_t>() < 0) {
        return absl::InvalidArgumentError(StrCat(source, ": layers[", l, "].phy2log[", s,
                                                 "] is not a non-negative integer"));
      }
      current.back().push_back(slots[s].get<int64_t>());
    }
  }
  return current;
}

}  // namespace moex::placement
