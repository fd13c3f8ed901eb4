// The transports a command can run on, by name: one table of
// name -> factory (as NCCL keeps one table of its transports), so that a
// command says `--transport NAME` and never builds a transport itself.
//
//   "mpi"   MPI point-to-point (Open MPI).
//   "ucx"   UCX tag matching, bootstrapped over MPI (when built with UCX).
//   "nccl"  MPI on the host, for counts, routing pairs and the bootstrap;
//           the token rows go through the GPU plugin's NCCL communicator,
//           which the plugin builds on top of this host transport.
//
// The in-process transport is for tests (it needs a hub of threads) and is
// not here.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/transport/transport.h"

namespace moex::transport {

// The names this build can create, in table order.
std::vector<std::string> TransportNames();

// The transport `name` for this rank. MPI must be up (an MpiSession alive
// for the transport's lifetime). An unknown name is InvalidArgument listing
// the known ones; a name this build lacks is Unimplemented saying why.
absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(std::string_view name);

}  // namespace moex::transport
