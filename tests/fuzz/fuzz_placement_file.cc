// The placement files `moex placement plan --current` reads, and the load
// statistics and placements of SGLang and vLLM that --load-format and
// --current-format read (every format on every input).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moex/placement/engine_formats.h"
#include "moex/placement/placement_file.h"
#include "moex/model/config_view.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<nlohmann::json> json = moex::model::ParseJsonText(text, "fuzz");
  if (!json.ok()) return 0;
  (void)moex::placement::ParsePlacementFile(*json, "fuzz");
  using moex::placement::EngineFormat;
  for (EngineFormat format : {EngineFormat::kMoex, EngineFormat::kSglang, EngineFormat::kVllm}) {
    (void)moex::placement::ParseEngineLoad(*json, format, "fuzz");
    absl::StatusOr<moex::placement::IndexMatrix> placement = moex::placement::ParseEnginePlacement(*json, format, "fuzz");
    if (!placement.ok() || placement->empty()) continue;
    int64_t experts = 1;
    for (int64_t e : (*placement)[0]) experts = std::max(experts, e + 1);
    (void)moex::placement::ExportPlacement(*placement, experts, format);
  }
  return 0;
}
