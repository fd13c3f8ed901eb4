#include "moex/core/tensor.h"

#include "absl/strings/str_join.h"

namespace moex {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return "[" + absl::StrJoin(shape, ", ") + "]";
}

}  // namespace moex
