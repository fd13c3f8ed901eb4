// A bench job (JobSpec.bench) on one rank: `moex worker` runs it instead of
// a layer when the controller's spec says so.
#pragma once

#include "absl/status/status.h"
#include "moex/transport/transport.h"
#include "moex/worker/worker_session.h"

namespace moex::worker {

// Collective: every rank of the job calls it. Stops when the controller
// cancels (the error says so).
absl::Status RunBenchJob(WorkerSession& session, transport::Transport& transport);

}  // namespace moex::worker
