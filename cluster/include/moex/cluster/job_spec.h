// The one conversion from a JobSpec (proto/moex/v1/job.proto) to the
// RunConfig its ranks run: the controller validates a submitted spec
// through it (spec_validation.h), and each rank (`moex worker`) runs what it
// gives. A field left 0 or empty takes RunConfig's default.
#pragma once

#include "moex/job/run_config.h"
#include "moex/v1/job.pb.h"

namespace moex::cluster {

job::RunConfig RunConfigFromSpec(const moex::v1::JobSpec& spec);

}  // namespace moex::cluster
