// The data plane's one narrow interface: all-to-all-v, point-to-point send
// and receive, barrier, and all-reduce of small arrays, each with a deadline.
//
// Implementations (MPI, UCX, in-process) supply only non-blocking
// point-to-point primitives (the protected Post*/Test/Cancel below); the
// collectives, the deadline handling and the naming of missing ranks are
// written once, here, so every transport fails the same way:
//
//   "mpi transport, rank 0: all-to-all #12 timed out after 5.0 s waiting
//    for rank(s) 3"
//
// Contract: collectives are called by every rank in the same order. After an
// operation fails, the transport refuses further operations (its buffers may
// still be in flight); the caller reports and exits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/core/deadline.h"

namespace moex::transport {

// The ranks a failed operation names, as data (the status's payload): the
// ranks it timed out waiting for, or the one it failed talking to. Empty
// for any other status.
std::vector<int> MissingRanks(const absl::Status& status);

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // "mpi", "ucx" or "inproc".
  virtual std::string_view name() const = 0;

  // All-to-all-v of bytes. `send` holds the blocks for ranks 0..W-1 back to
  // back, `send_bytes[r]` long; `recv` receives rank r's block at the sum of
  // `recv_bytes[0..r)`. Both spans of counts have world_size() entries and
  // must agree with what the peers send (exchange them first with
  // ExchangeCounts).
  absl::Status AllToAllV(const std::byte* send, std::span<const int64_t> send_bytes,
                         std::byte* recv, std::span<const int64_t> recv_bytes, Deadline deadline);
  // The same with each block's place given, as MPI_Alltoallv's
  // displacements: rank r's block is read from `send + send_offsets[r]` and
  // lands at `recv + recv_offsets[r]`; blocks may leave gaps between them
  // (e.g. a block a rank keeps for itself and does not send).
  absl::Status AllToAllV(const std::byte* send, std::span<const int64_t> send_bytes,
                         std::span<const int64_t> send_offsets, std::byte* recv,
                         std::span<const int64_t> recv_bytes, std::span<const int64_t> recv_offsets,
                         Deadline deadline);

  // Each rank sends counts[r] to rank r and receives one count from each.
  absl::Status ExchangeCounts(std::span<const int64_t> send_counts,
                              std::span<int64_t> recv_counts, Deadline deadline);

  // Point to point. `tag` separates concurrent conversations (< 2^20).
  absl::Status Send(int peer, const void* data, int64_t bytes, uint32_t tag, Deadline deadline);
  absl::Status Recv(int peer, void* data, int64_t bytes, uint32_t tag, Deadline deadline);

  absl::Status Barrier(Deadline deadline);

  // Element-wise sum over all ranks, added in rank order so that every rank
  // gets the same bits.
  absl::Status AllReduceSum(std::span<double> values, Deadline deadline);
  absl::Status AllReduceSum(std::span<int64_t> values, Deadline deadline);

  // Every rank's `mine` (same length on all ranks), rank by rank, into `all`
  // (world_size() * mine.size() values).
  absl::Status AllGather(std::span<const double> mine, std::span<double> all, Deadline deadline);

  // The first failure, if any.
  const absl::Status& failure() const { return failure_; }

 protected:
  Transport(int rank, int world_size) : rank_(rank), world_size_(world_size) {}

  using RequestId = int64_t;
  // Non-blocking primitives. Posting may complete at once. A tag here is
  // already unique per operation (see Tag()).
  virtual absl::StatusOr<RequestId> PostSend(int peer, const std::byte* data, int64_t bytes,
                                             uint64_t tag) = 0;
  virtual absl::StatusOr<RequestId> PostRecv(int peer, std::byte* data, int64_t bytes,
                                             uint64_t tag) = 0;
  // True once complete; an error if the request failed.
  virtual absl::StatusOr<bool> Test(RequestId request) = 0;
  // Abandons a receive that will not complete (best effort for sends).
  virtual void Cancel(RequestId request) = 0;
  // Lets the implementation make progress between tests.
  virtual void Progress() {}

 private:
  struct Pending {
    RequestId request;
    int peer;
    bool done = false;
  };
  absl::Status Start(std::string_view what);
  // Adds a posted request to `pending`, or fails the transport naming `peer`
  // (the earlier requests abandoned).
  absl::Status Posted(absl::StatusOr<RequestId> id, int peer, std::string_view what, std::vector<Pending>& pending);
  absl::Status WaitAll(std::vector<Pending>& pending, Deadline deadline, std::string_view what);
  absl::Status Fail(absl::Status status);
  // Every rank's `mine`, rank by rank, into `all` (world_size() x mine).
  template <typename T>
  absl::Status Gather(std::span<const T> mine, std::span<T> all, Deadline deadline);
  template <typename T>
  absl::Status AllReduce(std::span<T> values, Deadline deadline);
  // Operation tags: collectives count up together on every rank; point-to-
  // point tags live in their own space.
  uint64_t NextCollectiveTag() { return (uint64_t{1} << 40) | collective_sequence_++; }
  static uint64_t PointToPointTag(uint32_t tag) { return tag; }

  int rank_;
  int world_size_;
  uint64_t collective_sequence_ = 0;
  absl::Status failure_;
};

}  // namespace moex::transport
