// What an error message may echo of a string someone else sent (a client's
// job id, a spec field's value): its first kEchoBytes bytes, then how long
// it was. A megabyte-long id must not come back as a megabyte-long error
// (issue #19): gRPC carries the message in a header, and terminals and logs
// print it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "moex/core/str_cat.h"

namespace moex {

inline constexpr size_t kEchoBytes = 128;

// "abc" -> "abc"; 1 MiB of 'x' -> "xxx…x... (1048576 bytes)" (128 x's).
inline std::string Echo(std::string_view text) {
  if (text.size() <= kEchoBytes) return std::string(text);
  return StrCat(text.substr(0, kEchoBytes), "... (", text.size(), " bytes)");
}

}  // namespace moex
