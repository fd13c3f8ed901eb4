// The placement file `moex placement plan --current` reads.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moex/placement/placement_file.h"
#include "moex/model/config_view.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<nlohmann::json> json = moex::model::ParseJsonText(text, "fuzz");
  if (json.ok()) (void)moex::placement::ParsePlacementFile(*json, "fuzz");
  return 0;
}
