// The placement file `moex placement plan --json` writes and `--current`
// reads back: {"layers": [{"phy2log": [logical expert of each slot]}, ...]}.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "moex/placement/eplb.h"
#include "nlohmann/json.hpp"

namespace moex::placement {

// Untrusted input: every problem is an error naming `source` and the field.
absl::StatusOr<IndexMatrix> ParsePlacementFile(const nlohmann::json& j, std::string_view source);

}  // namespace moex::placement
