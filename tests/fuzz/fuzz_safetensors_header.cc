// safetensors header parser: the first 8 bytes give the size of the tensor
// data that follows the header; the rest is the header's JSON.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string_view>

#include "moex/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  int64_t data_bytes = 0;
  std::memcpy(&data_bytes, data, 8);
  if (data_bytes < 0) data_bytes = -(data_bytes + 1);
  std::string_view header(reinterpret_cast<const char*>(data) + 8, size - 8);
  std::map<std::string, moex::model::TensorInfo> tensors;
  (void)moex::model::ParseSafetensorsHeader(header, data_bytes, "fuzz.safetensors", &tensors);
  return 0;
}
