// All-to-all-v of device buffers over NCCL, beside a host Transport.
//
// The host transport (MPI or UCX) does what NCCL cannot do with a deadline:
// it carries the unique id from rank 0 to every rank (the bootstrap), the
// counts that precede each exchange, and, when an NCCL operation times
// out, a short barrier whose failure names the ranks that are gone.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0): every call
// returns at once and this class polls ncclCommGetAsyncError and the
// stream until the operation completes or the deadline passes; then it
// aborts the communicator (ncclCommAbort) and reports
//
//   "nccl transport, rank 0: all-to-all #7 timed out after 5.0 s; rank(s)
//    3 did not answer the host transport's barrier either"
//
// After a failure the transport refuses further operations, as Transport
// does. One process drives one GPU: local rank modulo the visible devices.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/transport/transport.h"

namespace moex::transport {

class NcclTransport {
 public:
  // Collective over every rank of `host`, which must outlive this object.
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(Transport& host, Deadline deadline);
  ~NcclTransport();
  NcclTransport(const NcclTransport&) = delete;
  NcclTransport& operator=(const NcclTransport&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int device() const { return device_; }
  // The stream every exchange runs on; kernels that feed it should run here.
  cudaStream_t stream() const { return stream_; }
  // "NCCL 2.28.3 on NVIDIA H200 (device 0)".
  std::string Describe() const;

  // Device bytes: `send` holds the blocks for ranks 0..W-1 back to back,
  // `send_bytes[r]` long; rank r's block lands in `recv` at the sum of
  // `recv_bytes[0..r)`. Counts must agree with the peers' (exchange them
  // with the host transport first). Returns once the data has arrived.
  absl::Status AllToAllV(const void* send, std::span<const int64_t> send_bytes, void* recv,
                         std::span<const int64_t> recv_bytes, Deadline deadline);

  const absl::Status& failure() const { return failure_; }

 private:
  struct State;
  NcclTransport(Transport& host, std::unique_ptr<State> state);
  // Polls until the communicator's last operation and the stream are done.
  absl::Status Wait(std::string_view what, Deadline deadline);
  absl::Status Fail(absl::Status status);

  Transport& host_;
  std::unique_ptr<State> state_;
  int rank_ = 0, world_size_ = 1, device_ = 0;
  cudaStream_t stream_ = nullptr;
  uint64_t sequence_ = 0;
  absl::Status failure_;
};

// The GPU this rank drives: its local rank (OMPI_COMM_WORLD_LOCAL_RANK,
// MPI_LOCALRANKID or SLURM_LOCALID) modulo the visible devices; an error
// when there is none.
absl::StatusOr<int> SelectLocalDevice(int rank);

}  // namespace moex::transport
