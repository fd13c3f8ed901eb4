// A JobSpec is checked before anything runs: INVALID_ARGUMENT naming the
// field, or OK. Hostile specs (huge numbers, odd names, unreadable configs)
// end here.
#pragma once

#include "absl/status/status.h"
#include "moex/v1/job.pb.h"

namespace moex::cluster {

struct SpecLimits {
  int max_world_size = 64;
};

// Fills defaults (transport "mpi", layer -1) in `spec` and validates it,
// including that the model is runnable and its experts fill the world.
absl::Status ValidateAndNormalise(moex::v1::JobSpec* spec, const SpecLimits& limits);

}  // namespace moex::cluster
