// Transport over MPI point-to-point (Open MPI), on a private duplicate of
// MPI_COMM_WORLD whose errors are returned, not fatal.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "moex/transport/transport.h"

namespace moex::transport {

// Initialises MPI for the lifetime of the object (if nobody did), and
// finalises it at the end unless Abort() ran. Works under mpirun and as a
// singleton without it.
class MpiSession {
 public:
  static absl::StatusOr<std::unique_ptr<MpiSession>> Start(int* argc, char*** argv);
  ~MpiSession();
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // Ends every rank of the job with `exit_code`, after `grace_seconds` so
  // that the other ranks can print their own diagnosis first.
  [[noreturn]] void Abort(int exit_code, double grace_seconds = 1.0);

 private:
  MpiSession(int rank, int world_size, bool owns) : rank_(rank), world_size_(world_size), owns_(owns) {}
  int rank_;
  int world_size_;
  bool owns_;
};

// Requires an MpiSession alive for the transport's lifetime.
absl::StatusOr<std::unique_ptr<Transport>> CreateMpiTransport();

}  // namespace moex::transport
