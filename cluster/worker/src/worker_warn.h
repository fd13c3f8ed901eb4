// A rank's warning on stderr, in one write so that ranks do not interleave
// mid-line: "moex worker: rank R: what".
#pragma once

#include <unistd.h>

#include <string>
#include <string_view>

#include "moex/core/str_cat.h"

namespace moex::worker::internal {

inline void Warn(int rank, std::string_view what) {
  const std::string line = StrCat("moex worker: rank ", rank, ": ", what, "\n");
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace moex::worker::internal
