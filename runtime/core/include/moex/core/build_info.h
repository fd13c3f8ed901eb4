// What this binary is: version, revision, and the optional parts it was
// built with. Printed by `moex --version` so that a bug report says it all.
#pragma once

#include <string>

#include "moex/core/build_info_generated.h"

namespace moex {

// One line, e.g. "moex 0.1.0 (rev 1a2b3c) mpi:yes ucx:yes cuda:no nccl:no".
std::string BuildDescription();

}  // namespace moex
