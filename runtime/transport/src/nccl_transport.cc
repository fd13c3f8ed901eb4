#include "moex/transport/nccl_transport.h"

#include <nccl.h>
#include <sched.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "moex/core/str_cat.h"

namespace moex::transport {
namespace {

constexpr uint32_t kUniqueIdTag = 0xC0DE1;  // point-to-point tag of the bootstrap

double Since(Deadline::Clock::time_point start) {
  return std::chrono::duration<double>(Deadline::Clock::now() - start).count();
}

}  // namespace

struct NcclTransport::State {
  ncclComm_t comm = nullptr;
  bool aborted = false;
};

absl::StatusOr<int> SelectLocalDevice(int rank) {
  int count = 0;
  cudaError_t code = cudaGetDeviceCount(&count);
  if (code != cudaSuccess) {
    return absl::FailedPreconditionError(StrCat("rank ", rank, ": no CUDA device: ", cudaGetErrorString(code)));
  }
  if (count == 0) return absl::FailedPreconditionError(StrCat("rank ", rank, ": no CUDA device: the driver reports none"));
  int local = rank;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') {
      local = std::atoi(v);
      break;
    }
  }
  return local % count;
}

NcclTransport::NcclTransport(Transport& host, std::unique_ptr<State> state)
    : host_(host), state_(std::move(state)), rank_(host.rank()), world_size_(host.world_size()) {}

NcclTransport::~NcclTransport() {
  if (state_ && state_->comm != nullptr) {
    // A communicator that failed is aborted, not destroyed: destroying waits
    // for peers that may be gone.
    if (!failure_.ok() || state_->aborted) {
      if (!state_->aborted) ncclCommAbort(state_->comm);
    } else {
      ncclCommFinalize(state_->comm);
      ncclResult_t r = ncclInProgress;
      for (int i = 0; i < 100000 && r == ncclInProgress; ++i) {
        if (ncclCommGetAsyncError(state_->comm, &r) != ncclSuccess) break;
        if (r == ncclInProgress) sched_yield();
      }
      if (r == ncclSuccess) {
        ncclCommDestroy(state_->comm);
      } else {
        ncclCommAbort(state_->comm);
      }
    }
  }
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(Transport& host, Deadline deadline) {
  const int rank = host.rank(), world = host.world_size();
  absl::StatusOr<int> device = SelectLocalDevice(rank);
  if (!device.ok()) return device.status();
  if (cudaError_t c = cudaSetDevice(*device); c != cudaSuccess) {
    return absl::FailedPreconditionError(StrCat("rank ", rank, ": cudaSetDevice(", *device, "): ", cudaGetErrorString(c)));
  }
  // The unique id goes from rank 0 to every rank over the host transport,
  // under the deadline: a rank that never arrives is named there.
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (rank == 0) {
    if (ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess) {
      return absl::UnavailableError(StrCat("nccl transport, rank 0: ncclGetUniqueId: ", ncclGetErrorString(r)));
    }
    for (int peer = 1; peer < world; ++peer) {
      if (absl::Status s = host.Send(peer, &id, sizeof(id), kUniqueIdTag, deadline); !s.ok()) {
        return absl::Status(s.code(), StrCat("nccl transport bootstrap: ", s.message()));
      }
    }
  } else if (absl::Status s = host.Recv(0, &id, sizeof(id), kUniqueIdTag, deadline); !s.ok()) {
    return absl::Status(s.code(), StrCat("nccl transport bootstrap: ", s.message()));
  }
  auto state = std::make_unique<State>();
  std::unique_ptr<NcclTransport> t(new NcclTransport(host, std::move(state)));
  t->device_ = *device;
  if (cudaError_t c = cudaStreamCreateWithFlags(&t->stream_, cudaStreamNonBlocking); c != cudaSuccess) {
    return absl::InternalError(StrCat("nccl transport, rank ", rank, ": cudaStreamCreate: ", cudaGetErrorString(c)));
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = ncclCommInitRankConfig(&t->state_->comm, world, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    return absl::UnavailableError(StrCat("nccl transport, rank ", rank, ": ncclCommInitRankConfig: ",
                                         ncclGetErrorString(r), ncclGetLastError(t->state_->comm)));
  }
  if (absl::Status s = t->Wait("communicator set-up", deadline); !s.ok()) return s;
  return t;
}

std::string NcclTransport::Describe() const {
  int version = 0;
  ncclGetVersion(&version);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, device_);
  return absl::StrFormat("NCCL %d.%d.%d on %s (device %d)", version / 10000, (version / 100) % 100, version % 100,
                         prop.name, device_);
}

absl::Status NcclTransport::Fail(absl::Status status) {
  if (failure_.ok()) failure_ = status;
  return status;
}

absl::Status NcclTransport::Wait(std::string_view what, Deadline deadline) {
  const auto started = Deadline::Clock::now();
  int idle = 0;
  while (true) {
    ncclResult_t async = ncclSuccess;
    if (ncclResult_t r = ncclCommGetAsyncError(state_->comm, &async); r != ncclSuccess) async = r;
    if (async != ncclSuccess && async != ncclInProgress) {
      std::string detail = ncclGetLastError(state_->comm);
      ncclCommAbort(state_->comm);
      state_->aborted = true;
      // The usual cause at set-up: more ranks than GPUs on a node.
      const std::string hint = async == ncclInvalidUsage && sequence_ == 0
                                   ? StrCat(" (is this GPU, device ", device_,
                                            ", shared with another rank? NCCL needs one GPU a rank)")
                                   : "";
      return Fail(absl::UnavailableError(StrCat("nccl transport, rank ", rank_, ": ", what, " failed: ",
                                                ncclGetErrorString(async), " ", detail, hint)));
    }
    if (async == ncclSuccess) {
      cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        return Fail(absl::InternalError(StrCat("nccl transport, rank ", rank_, ": ", what, ": the stream failed: ",
                                               cudaGetErrorString(q))));
      }
    }
    if (deadline.Expired()) {
      const double waited = Since(started);
      ncclCommAbort(state_->comm);
      state_->aborted = true;
      // NCCL cannot say who is missing; the host transport can.
      absl::Status barrier = host_.Barrier(Deadline::InSeconds(std::min(5.0, std::max(1.0, waited / 4))));
      std::string who = barrier.ok() ? "every rank answered the host transport's barrier, so the fault is in NCCL or a GPU"
                                     : StrCat("the host transport says: ", barrier.message());
      return Fail(absl::DeadlineExceededError(
          absl::StrFormat("nccl transport, rank %d: %s timed out after %.1f s; %s", rank_, std::string(what), waited,
                          who)));
    }
    if (++idle > 64) sched_yield();
  }
}

absl::Status NcclTransport::AllToAllV(const void* send, std::span<const int64_t> send_bytes, void* recv,
                                      std::span<const int64_t> recv_bytes, Deadline deadline) {
  if (!failure_.ok()) {
    return absl::FailedPreconditionError(StrCat("nccl transport, rank ", rank_, ": refused after an earlier failure: ",
                                                failure_.message()));
  }
  if (static_cast<int>(send_bytes.size()) != world_size_ || static_cast<int>(recv_bytes.size()) != world_size_) {
    return absl::InvalidArgumentError(StrCat("nccl transport, rank ", rank_, ": all-to-all needs ", world_size_,
                                             " counts each way, got ", send_bytes.size(), " and ", recv_bytes.size()));
  }
  const std::string what = StrCat("all-to-all #", ++sequence_);
  int64_t send_off = 0, recv_off = 0;
  ncclResult_t r = ncclGroupStart();
  for (int peer = 0; peer < world_size_ && r == ncclSuccess; ++peer) {
    if (send_bytes[peer] > 0) {
      r = ncclSend(static_cast<const char*>(send) + send_off, static_cast<size_t>(send_bytes[peer]), ncclInt8, peer,
                   state_->comm, stream_);
    }
    if ((r == ncclSuccess || r == ncclInProgress) && recv_bytes[peer] > 0) {
      r = ncclRecv(static_cast<char*>(recv) + recv_off, static_cast<size_t>(recv_bytes[peer]), ncclInt8, peer,
                   state_->comm, stream_);
    }
    if (r == ncclInProgress) r = ncclSuccess;
    send_off += send_bytes[peer];
    recv_off += recv_bytes[peer];
  }
  ncclResult_t ended = ncclGroupEnd();
  if (r == ncclSuccess) r = ended;
  if (r != ncclSuccess && r != ncclInProgress) {
    ncclCommAbort(state_->comm);
    state_->aborted = true;
    return Fail(absl::UnavailableError(StrCat("nccl transport, rank ", rank_, ": ", what, ": ", ncclGetErrorString(r),
                                              " ", ncclGetLastError(state_->comm))));
  }
  return Wait(what, deadline);
}

}  // namespace moex::transport
