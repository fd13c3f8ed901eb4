#include "moex/transport/shared_segments.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>

#include "absl/strings/str_join.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/transport/gather_strings.h"

namespace moex::transport {
namespace {

std::string Bytes(int64_t bytes) { return FormatBytes(static_cast<double>(bytes)); }

std::mutex& ObserverMutex() {
  static std::mutex mutex;
  return mutex;
}
std::function<void(const std::string&)>& Observer() {
  static std::function<void(const std::string&)> observer;
  return observer;
}

// A rank's failure: where, then why, one line each (no rank in either, so
// that ranks failing alike read as one).
std::string Failure(const std::string& where, const std::string& why) { return StrCat(where, "\n", why); }

// Every rank's failure (most are ""), grouped into the message every rank
// returns: "/dev/shm on ranks 0, 2: No space left on device (...)".
absl::Status Failed(Transport& t, const std::string& mine, Deadline deadline) {
  MOEX_ASSIGN_OR_RETURN(std::vector<std::string> all, AllGatherStrings(t, mine, deadline));
  std::vector<std::pair<std::string, std::vector<int>>> groups;  // in order of their first rank
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    if (all[r].empty()) continue;
    auto same = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == all[r]; });
    if (same == groups.end()) groups.push_back({all[r], {r}});
    else same->second.push_back(r);
  }
  std::vector<std::string> lines;
  for (const auto& [failure, ranks] : groups) {
    const size_t split = failure.find('\n');
    lines.push_back(StrCat(failure.substr(0, split), ranks.size() == 1 ? " on rank " : " on ranks ",
                           absl::StrJoin(ranks, ", "), ": ", failure.substr(split + 1)));
  }
  return absl::ResourceExhaustedError(absl::StrJoin(lines, "; "));
}

}  // namespace

absl::Status SharedSegmentsOptions::Validate() const {
  if (directory.empty() || directory[0] != '/') {
    return absl::InvalidArgumentError(StrCat("shared segments: directory '", directory, "' is not an absolute path"));
  }
  if (max_bytes < 0) {
    return absl::InvalidArgumentError(StrCat("shared segments: max_bytes ", max_bytes, " is negative"));
  }
  return absl::OkStatus();
}

void SetSegmentCreationObserver(std::function<void(const std::string& path)> observer) {
  std::lock_guard<std::mutex> lock(ObserverMutex());
  Observer() = std::move(observer);
}

void SharedSegments::Fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

std::string SharedSegments::Path(int rank, int generation) const {
  char name[96];
  std::snprintf(name, sizeof(name), "/moex-%016llx-%d-%d", static_cast<unsigned long long>(job_), rank, generation);
  return options_.directory + name;
}

absl::StatusOr<std::unique_ptr<SharedSegments>> SharedSegments::Create(Transport& t, SharedSegmentsOptions options,
                                                                       Deadline deadline) {
  std::vector<int> everyone(t.world_size());
  for (int r = 0; r < t.world_size(); ++r) everyone[r] = r;
  return Create(t, std::move(options), std::move(everyone), deadline);
}

absl::StatusOr<std::unique_ptr<SharedSegments>> SharedSegments::Create(Transport& t, SharedSegmentsOptions options,
                                                                       std::vector<int> peers, Deadline deadline) {
  MOEX_RETURN_IF_ERROR(options.Validate());
  std::vector<uint8_t> is_peer(t.world_size(), 0);
  for (size_t i = 0; i < peers.size(); ++i) {
    if (peers[i] < 0 || peers[i] >= t.world_size() || (i > 0 && peers[i] <= peers[i - 1])) {
      return absl::InvalidArgumentError(StrCat("shared segments on rank ", t.rank(), ": peers (",
                                               absl::StrJoin(peers, ", "), ") are not ascending ranks below ",
                                               t.world_size()));
    }
    is_peer[peers[i]] = 1;
  }
  if (!is_peer[t.rank()]) {
    return absl::InvalidArgumentError(StrCat("shared segments on rank ", t.rank(), ": peers (",
                                             absl::StrJoin(peers, ", "), ") leave out this rank"));
  }
  // One name space per job: rank 0's random number.
  std::vector<int64_t> job(1, 0);
  if (t.rank() == 0) job[0] = static_cast<int64_t>(std::random_device()() >> 1) << 20 | (getpid() & 0xfffff);
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(job), deadline));
  return std::unique_ptr<SharedSegments>(
      new SharedSegments(std::move(options), static_cast<uint64_t>(job[0]), t.rank(), std::move(is_peer)));
}

SharedSegments::~SharedSegments() {
  for (Map& m : maps_) {
    if (m.data != nullptr) munmap(m.data, static_cast<size_t>(m.bytes));
  }
}

std::string SharedSegments::Grow(int64_t bytes) {
  Map& own = maps_[rank_];
  if (own.data != nullptr) munmap(own.data, static_cast<size_t>(own.bytes));
  own = Map{.data = nullptr, .bytes = 0, .generation = own.generation + 1};
  const std::string path = Path(rank_, own.generation);
  if (options_.max_bytes > 0 && bytes > options_.max_bytes) {
    return Failure(options_.directory, StrCat("a ", Bytes(bytes), " segment is over the ", Bytes(options_.max_bytes),
                                              " limit (SharedSegmentsOptions.max_bytes)"));
  }
  {
    std::lock_guard<std::mutex> lock(ObserverMutex());
    if (Observer()) Observer()(path);
  }
  int fd = open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  int error = fd < 0 ? errno : posix_fallocate(fd, 0, bytes);
  void* data = error == 0 ? mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                          : MAP_FAILED;
  if (error == 0 && data == MAP_FAILED) error = errno;
  if (fd >= 0) close(fd);
  if (error != 0) {
    if (fd >= 0) unlink(path.c_str());
    return Failure(options_.directory, StrCat(std::strerror(error), " (making a ", Bytes(bytes), " segment)"));
  }
  own.data = static_cast<std::byte*>(data);
  own.bytes = bytes;
  return "";
}

std::string SharedSegments::MapPeer(int r, int64_t bytes) {
  Map& m = maps_[r];
  if (m.data != nullptr) munmap(m.data, static_cast<size_t>(m.bytes));
  m = Map{.data = nullptr, .bytes = 0, .generation = m.generation + 1};
  const std::string path = Path(r, m.generation);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  void* data = fd >= 0 ? mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                       : MAP_FAILED;
  const int error = errno;
  if (fd >= 0) close(fd);
  if (data == MAP_FAILED) {
    return Failure(options_.directory, StrCat("cannot map rank ", r, "'s segment (", path, "): ", std::strerror(error)));
  }
  m.data = static_cast<std::byte*>(data);
  m.bytes = bytes;
  return "";
}

absl::Status SharedSegments::Reserve(Transport& t, std::span<const int64_t> bytes, Deadline deadline) {
  const int world = static_cast<int>(maps_.size());
  bool any = false;
  for (int r = 0; r < world; ++r) any |= bytes[r] > maps_[r].bytes;
  if (!any) return absl::OkStatus();  // every rank saw the same sizes: nobody calls below

  // 1. A growing rank makes its new segment: a quarter more than asked, so
  // that growing is rare, within the limit. The sizes made (or -1: failed)
  // go to every rank, which maps them as made: ranks need not agree on
  // the limit.
  std::string failure;
  std::vector<double> made(1, 0.0), all_made(world, 0.0);
  if (bytes[rank_] > maps_[rank_].bytes) {
    const int64_t page = sysconf(_SC_PAGESIZE);
    int64_t size = (std::max<int64_t>(bytes[rank_] + bytes[rank_] / 4, 1 << 20) + page - 1) / page * page;
    if (options_.max_bytes > 0) size = std::max(std::min(size, options_.max_bytes), bytes[rank_]);
    failure = Grow(size);
    made[0] = failure.empty() ? static_cast<double>(size) : -1.0;
  }
  MOEX_RETURN_IF_ERROR(t.AllGather(made, all_made, deadline));
  if (std::count(all_made.begin(), all_made.end(), -1.0) > 0) {
    if (all_made[rank_] > 0) unlink(Path(rank_, maps_[rank_].generation).c_str());  // nobody will map it
    return Failed(t, failure, deadline);
  }

  // 2. Everyone maps its peers' new segments, and notes the others' sizes
  // (so that every rank decides alike whether a Reserve grows anything).
  for (int r = 0; r < world; ++r) {
    if (r == rank_ || all_made[r] <= 0) continue;
    if (is_peer_[r] && failure.empty()) {
      failure = MapPeer(r, static_cast<int64_t>(all_made[r]));
    } else if (!is_peer_[r]) {
      maps_[r] = Map{.data = nullptr, .bytes = static_cast<int64_t>(all_made[r]), .generation = maps_[r].generation + 1};
    }
  }
  std::vector<int64_t> failures = {failure.empty() ? 0 : 1};
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(failures), deadline));
  // 3. Mapped everywhere (or given up): the names can go.
  if (all_made[rank_] > 0) unlink(Path(rank_, maps_[rank_].generation).c_str());
  if (failures[0] > 0) return Failed(t, failure, deadline);
  return absl::OkStatus();
}

}  // namespace moex::transport
