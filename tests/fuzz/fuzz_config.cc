// config.json reader: any bytes -> a ModelArch or an error, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moex/model/config_view.h"
#include "moex/model/model_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<nlohmann::json> json = moex::model::ParseJsonText(text, "fuzz");
  if (json.ok()) (void)moex::model::ParseModelConfig(*json, "fuzz");
  return 0;
}
