// Checks on command-line values that CLI11 would otherwise take wrongly.
#pragma once

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"

namespace moex::cli {

// An unsigned 64-bit flag (a seed): CLI11 2.1 reads "-1" as 2^64-1 and
// 2^64 as something, silently; this refuses both, naming the range.
inline CLI::Validator Unsigned64() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t value = 0;
        if (!absl::SimpleAtoi(text, &value)) return "'" + text + "' is not an integer from 0 to 18446744073709551615";
        return "";
      },
      "UINT64");
}

}  // namespace moex::cli
