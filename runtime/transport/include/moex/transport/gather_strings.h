// Every rank's string, rank by rank, on every rank: for what all ranks must
// agree on and only one knows (host names, why a rank failed), so that each
// rank can build the same message from the same facts.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/transport/transport.h"

namespace moex::transport {

// Collective. Strings may differ in length (and be empty).
absl::StatusOr<std::vector<std::string>> AllGatherStrings(Transport& transport, std::string_view mine,
                                                          Deadline deadline);

}  // namespace moex::transport
