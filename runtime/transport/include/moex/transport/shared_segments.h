// Shared memory between the ranks of a transport that share one
// shared-memory directory (one host: check with transport/host_map.h
// first): each rank owns one segment, a file in that directory, and maps
// its peers' (every rank, or only the ranks on its host), so that a rank
// can write straight into a peer's receive area and read a peer's results
// in place. The intra-node paths of dispatch and combine use it; nothing
// else moves data through it.
//
// Every rank of the transport takes part in Create and Reserve, wherever
// it is: with ranks on several hosts, each host's ranks map each other's
// segments, and the sizes of every segment are known everywhere.
//
// Segments are unlinked as soon as every rank has mapped them: a crash
// leaves nothing behind in /dev/shm. Space is reserved with
// posix_fallocate, so a full /dev/shm is an error here, never a SIGBUS
// later. Synchronisation is the caller's: a transport barrier between the
// writes and the reads (Fence() around it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/transport/transport.h"

namespace moex::transport {

// Told each segment's path before the segment is created, so that what a
// killed rank leaves between creating and unlinking one can be found: a
// controller job's rank records them for its host's cleanup
// (launcher/host_cleanup.h). Process-wide; set it before the first Create
// (an empty function clears it). It must not throw and should be quick.
void SetSegmentCreationObserver(std::function<void(const std::string& path)> observer);

struct SharedSegmentsOptions {
  // Where the segments live: a tmpfs that every rank of the host sees.
  std::string directory = "/dev/shm";
  // The most one rank's segment may take, in bytes (0: as much as the
  // directory has). Growing past it fails as a full directory does.
  int64_t max_bytes = 0;

  // An absolute directory, a limit >= 0.
  absl::Status Validate() const;
};

class SharedSegments {
 public:
  // Collective: agrees on the segments' names. Maps nothing yet. Every
  // rank is a peer: all of them share this rank's directory.
  static absl::StatusOr<std::unique_ptr<SharedSegments>> Create(Transport& t, SharedSegmentsOptions options,
                                                                Deadline deadline);
  // The same, mapping only the segments of `peers` (ascending ranks, this
  // one among them: HostMap::local_ranks(), the ranks that share this
  // rank's directory). An error, on this rank, when `peers` is not that.
  static absl::StatusOr<std::unique_ptr<SharedSegments>> Create(Transport& t, SharedSegmentsOptions options,
                                                                std::vector<int> peers, Deadline deadline);
  ~SharedSegments();
  SharedSegments(const SharedSegments&) = delete;
  SharedSegments& operator=(const SharedSegments&) = delete;

  // Collective, with the same `bytes` (one entry per rank) on every rank:
  // grows the segments that are smaller (every peer remaps them). When a
  // rank cannot (its directory is full, missing, or the limit is reached),
  // every rank returns ResourceExhausted with the same message, naming the
  // rank(s), the directory and the reason:
  //   "/dev/shm on rank 2: No space left on device (making a 64.00 MiB segment)"
  // After a failure the segments are in no state to use: drop them.
  absl::Status Reserve(Transport& t, std::span<const int64_t> bytes, Deadline deadline);

  // Rank `rank`'s segment, mapped here; null where `rank` is not a peer.
  std::byte* segment(int rank) const { return maps_[rank].data; }
  // Its size, known for every rank (peer or not).
  int64_t size(int rank) const { return maps_[rank].bytes; }
  bool is_peer(int rank) const { return is_peer_[rank] != 0; }
  const SharedSegmentsOptions& options() const { return options_; }

  // Orders this rank's stores before a barrier and its loads after one.
  static void Fence();

 private:
  struct Map {
    std::byte* data = nullptr;
    int64_t bytes = 0;
    int generation = 0;
  };
  SharedSegments(SharedSegmentsOptions options, uint64_t job, int rank, std::vector<uint8_t> is_peer)
      : options_(std::move(options)), job_(job), rank_(rank), maps_(is_peer.size()), is_peer_(std::move(is_peer)) {}
  std::string Path(int rank, int generation) const;
  // This rank's new segment of `bytes`; "" or why not.
  std::string Grow(int64_t bytes);
  // Maps rank r's new segment of `bytes`; "" or why not.
  std::string MapPeer(int r, int64_t bytes);

  SharedSegmentsOptions options_;
  uint64_t job_;
  int rank_;
  std::vector<Map> maps_;       // [W] data only for peers; bytes and generation for every rank
  std::vector<uint8_t> is_peer_;  // [W]
};

}  // namespace moex::transport
