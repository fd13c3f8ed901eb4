// A JobSpec is checked before anything runs: INVALID_ARGUMENT naming the
// field, or OK. Hostile specs (huge numbers, odd names, unreadable configs)
// end here.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moex/v1/job.pb.h"

namespace moex::cluster {

struct SpecLimits {
  int max_world_size = 64;
  // Directories under which spec.model (when not a preset) and spec.weights
  // may name files, canonical (client_files.h: CanonicalDataRoots); empty:
  // presets only, and no weights (`moex serve --data-root`).
  std::vector<std::string> data_roots = {};
  // Memory the ranks may use when they all run on the controller's host (a
  // local launcher): a layer whose experts, in the checkpoint's dtype, need
  // more is refused at submit. -1: unknown (ranks elsewhere), not checked.
  int64_t local_memory_bytes = -1;
};

// Drops the fields this controller does not know (recursively: a client
// cannot make the record grow with them), fills defaults (transport "mpi",
// layer -1) in `spec` and validates it, including that the model is runnable
// and its experts fill the world. A file the spec names is checked as
// client_files.h says, and the spec then carries its resolved path.
absl::Status ValidateAndNormalise(moex::v1::JobSpec* spec, const SpecLimits& limits);

}  // namespace moex::cluster
