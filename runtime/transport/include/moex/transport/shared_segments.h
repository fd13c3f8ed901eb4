// Shared memory between the ranks of a transport that all run on one host:
// each rank owns one segment (POSIX shared memory) and maps every peer's, so
// that a rank can write straight into a peer's receive area and read a
// peer's results in place. The intra-node fast path of dispatch and combine
// uses it; nothing else moves data through it.
//
// Segments are unlinked as soon as every rank has mapped them: a crash
// leaves nothing behind in /dev/shm. Space is reserved with
// posix_fallocate, so a full /dev/shm is an error here, never a SIGBUS
// later. Synchronisation is the caller's: a transport barrier between the
// writes and the reads (Fence() around it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/transport/transport.h"

namespace moex::transport {

class SharedSegments {
 public:
  // Collective. FailedPrecondition when the ranks are not all on this host.
  static absl::StatusOr<std::unique_ptr<SharedSegments>> Create(Transport& t, Deadline deadline);
  ~SharedSegments();
  SharedSegments(const SharedSegments&) = delete;
  SharedSegments& operator=(const SharedSegments&) = delete;

  // Collective, with the same `bytes` (one entry per rank) on every rank:
  // grows the segments that are smaller (every rank remaps them). An error
  // (e.g. /dev/shm full) is returned on every rank.
  absl::Status Reserve(Transport& t, std::span<const int64_t> bytes, Deadline deadline);

  std::byte* segment(int rank) const { return maps_[rank].data; }
  int64_t size(int rank) const { return maps_[rank].bytes; }

  // Orders this rank's stores before a barrier and its loads after one.
  static void Fence();

 private:
  struct Map {
    std::byte* data = nullptr;
    int64_t bytes = 0;
    int generation = 0;
  };
  SharedSegments(uint64_t job, int rank, int world) : job_(job), rank_(rank), maps_(world) {}
  std::string Name(int rank, int generation) const;

  uint64_t job_;
  int rank_;
  std::vector<Map> maps_;
};

}  // namespace moex::transport
