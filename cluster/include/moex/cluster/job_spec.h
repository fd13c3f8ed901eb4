// The one conversion from a JobSpec (proto/moex/v1/job.proto) to the
// RunConfig its ranks run: the controller validates a submitted spec
// through it (spec_validation.h), and each rank (`moex worker`) runs what it
// gives. An empty transport or rebalance policy, a 0 interval, window or
// exchange timeout take RunConfig's defaults; every other field is taken as
// it is (0 tokens per rank, seed 0 and steps 0 mean just that).
#pragma once

#include "moex/job/run_config.h"
#include "moex/v1/job.pb.h"

namespace moex::cluster {

job::RunConfig RunConfigFromSpec(const moex::v1::JobSpec& spec);

}  // namespace moex::cluster
