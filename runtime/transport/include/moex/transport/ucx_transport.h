// Transport over UCX (ucp tag matching): shared memory and TCP on one
// machine, RDMA where the fabric has it; UCX picks (UCX_TLS overrides).
// Worker addresses are exchanged over a bootstrap transport (MPI under
// mpirun), which the UCX transport keeps for its final barrier.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "moex/transport/transport.h"

namespace moex::transport {

absl::StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(std::unique_ptr<Transport> bootstrap);

}  // namespace moex::transport
