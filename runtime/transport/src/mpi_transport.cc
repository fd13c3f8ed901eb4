#include "moex/transport/mpi_transport.h"

#include <mpi.h>
#include <unistd.h>

#include <climits>
#include <vector>

#include "moex/core/str_cat.h"

namespace moex::transport {
namespace {

// MPI return codes become Status here and nowhere else.
absl::Status MpiStatus(int code, std::string_view what) {
  if (code == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return absl::UnavailableError(StrCat(what, ": ", std::string_view(text, length)));
}

class MpiTransport final : public Transport {
 public:
  MpiTransport(MPI_Comm comm, int rank, int world, int tag_upper_bound)
      : Transport(rank, world), comm_(comm), tag_upper_bound_(tag_upper_bound) {}
  ~MpiTransport() override {
    for (MPI_Request& request : requests_) {
      if (request != MPI_REQUEST_NULL) MPI_Request_free(&request);
    }
    MPI_Comm_free(&comm_);
  }

  std::string_view name() const override { return "mpi"; }

 protected:
  absl::StatusOr<RequestId> PostSend(int peer, const std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    if (bytes > INT_MAX) return TooLarge(bytes);
    MPI_Request request;
    int code = MPI_Isend(data, static_cast<int>(bytes), MPI_BYTE, peer, MpiTag(tag), comm_, &request);
    if (code != MPI_SUCCESS) return MpiStatus(code, StrCat("MPI_Isend to rank ", peer));
    requests_.push_back(request);
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<RequestId> PostRecv(int peer, std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    if (bytes > INT_MAX) return TooLarge(bytes);
    MPI_Request request;
    int code = MPI_Irecv(data, static_cast<int>(bytes), MPI_BYTE, peer, MpiTag(tag), comm_, &request);
    if (code != MPI_SUCCESS) return MpiStatus(code, StrCat("MPI_Irecv from rank ", peer));
    requests_.push_back(request);
    expected_.resize(requests_.size(), -1);
    expected_.back() = bytes;
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<bool> Test(RequestId id) override {
    MPI_Request& request = requests_[id];
    if (request == MPI_REQUEST_NULL) return true;
    int done = 0;
    MPI_Status status;
    int code = MPI_Test(&request, &done, &status);
    if (code != MPI_SUCCESS) return MpiStatus(code, "MPI_Test");
    if (done && id < static_cast<RequestId>(expected_.size()) && expected_[id] >= 0) {
      int received = 0;
      MPI_Get_count(&status, MPI_BYTE, &received);
      if (received != expected_[id]) {
        return absl::DataLossError(StrCat("received ", received, " bytes where ", expected_[id],
                                          " were expected"));
      }
    }
    if (done && requests_.size() > 4096) Compact();
    return done != 0;
  }

  void Cancel(RequestId id) override {
    MPI_Request& request = requests_[id];
    if (request == MPI_REQUEST_NULL) return;
    MPI_Cancel(&request);
    MPI_Request_free(&request);
  }

 private:
  static absl::Status TooLarge(int64_t bytes) {
    return absl::InvalidArgumentError(
        StrCat("one MPI message of ", bytes, " bytes exceeds MPI's int count (", INT_MAX, ")"));
  }

  // Point-to-point tags (< 2^20) map to themselves; collective sequence
  // numbers cycle through the tags above them.
  int MpiTag(uint64_t tag) const {
    if (tag < (uint64_t{1} << 20)) return static_cast<int>(tag);
    uint64_t span = static_cast<uint64_t>(tag_upper_bound_) - (uint64_t{1} << 20);
    return static_cast<int>((uint64_t{1} << 20) + (tag & 0xffffffffff) % span);
  }

  // Completed requests are MPI_REQUEST_NULL; drop a long tail of them so the
  // vector does not grow with the number of steps. Ids are only held within
  // one operation, so renumbering between operations is safe once all done.
  void Compact() {
    for (const MPI_Request& request : requests_) {
      if (request != MPI_REQUEST_NULL) return;
    }
    requests_.clear();
    expected_.clear();
  }

  MPI_Comm comm_;
  int tag_upper_bound_;
  std::vector<MPI_Request> requests_;
  std::vector<int64_t> expected_;  // bytes a receive expects; -1 for sends
};

}  // namespace

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Start(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  bool owns = false;
  if (!initialized) {
    int provided = 0;
    int code = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (code != MPI_SUCCESS) return MpiStatus(code, "MPI_Init_thread");
    owns = true;
  }
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  return std::unique_ptr<MpiSession>(new MpiSession(rank, world, owns));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

void MpiSession::Abort(int exit_code, double grace_seconds) {
  if (grace_seconds > 0) usleep(static_cast<useconds_t>(grace_seconds * 1e6));
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  _exit(exit_code);  // MPI_Abort does not return; this is for the compiler
}

absl::StatusOr<std::unique_ptr<Transport>> CreateMpiTransport() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return absl::FailedPreconditionError("the MPI transport needs MPI initialised");
  MPI_Comm comm;
  int code = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (code != MPI_SUCCESS) return MpiStatus(code, "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, world = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world);
  int* tag_ub = nullptr;
  int found = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &found);
  int upper = found && tag_ub != nullptr ? *tag_ub : 32767;
  if (upper < (1 << 21)) {
    return absl::FailedPreconditionError(
        StrCat("this MPI allows tags up to ", upper, "; moex needs at least 2^21"));
  }
  return std::unique_ptr<Transport>(new MpiTransport(comm, rank, world, upper));
}

}  // namespace moex::transport
