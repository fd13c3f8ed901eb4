#include "moex/transport/shared_segments.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <random>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::transport {
namespace {

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

}  // namespace

void SharedSegments::Fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

std::string SharedSegments::Name(int rank, int generation) const {
  char name[96];
  std::snprintf(name, sizeof(name), "/moex-%016llx-%d-%d", static_cast<unsigned long long>(job_), rank, generation);
  return name;
}

absl::StatusOr<std::unique_ptr<SharedSegments>> SharedSegments::Create(Transport& t, Deadline deadline) {
  const int world = t.world_size();
  // Same host: a 48-bit hash of the host name (exact in a double), gathered
  // from every rank.
  std::string host = HostName();
  std::vector<double> mine = {static_cast<double>(std::hash<std::string>()(host) & ((uint64_t{1} << 48) - 1))};
  std::vector<double> all(world);
  MOEX_RETURN_IF_ERROR(t.AllGather(mine, all, deadline));
  for (int r = 0; r < world; ++r) {
    if (all[r] != all[0]) {
      return absl::FailedPreconditionError(StrCat("ranks 0 and ", r, " run on different hosts"));
    }
  }
  // One name space per job: rank 0's random number.
  std::vector<int64_t> job(1, 0);
  if (t.rank() == 0) job[0] = static_cast<int64_t>(std::random_device()() >> 1) << 20 | (getpid() & 0xfffff);
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(job), deadline));
  return std::unique_ptr<SharedSegments>(new SharedSegments(static_cast<uint64_t>(job[0]), t.rank(), world));
}

SharedSegments::~SharedSegments() {
  for (Map& m : maps_) {
    if (m.data != nullptr) munmap(m.data, static_cast<size_t>(m.bytes));
  }
}

absl::Status SharedSegments::Reserve(Transport& t, std::span<const int64_t> bytes, Deadline deadline) {
  const int world = static_cast<int>(maps_.size());
  std::vector<int64_t> grow(world, 0);
  bool any = false;
  const int64_t page = sysconf(_SC_PAGESIZE);
  for (int r = 0; r < world; ++r) {
    if (bytes[r] > maps_[r].bytes) {
      // A quarter more than asked, so that growing is rare.
      grow[r] = ((std::max<int64_t>(bytes[r] + bytes[r] / 4, 1 << 20) + page - 1) / page) * page;
      any = true;
    }
  }
  if (!any) return absl::OkStatus();  // every rank saw the same sizes: nobody calls below

  // 1. Each growing rank makes its new segment.
  std::string failure;
  if (grow[rank_] > 0) {
    Map& own = maps_[rank_];
    if (own.data != nullptr) munmap(own.data, static_cast<size_t>(own.bytes));
    own = Map{.data = nullptr, .bytes = 0, .generation = own.generation + 1};
    const std::string name = Name(rank_, own.generation);
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    int error = fd < 0 ? errno : posix_fallocate(fd, 0, grow[rank_]);
    void* data = error == 0 ? mmap(nullptr, static_cast<size_t>(grow[rank_]), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                            : MAP_FAILED;
    if (error == 0 && data == MAP_FAILED) error = errno;
    if (fd >= 0) close(fd);
    if (error != 0) {
      if (fd >= 0) shm_unlink(name.c_str());
      failure = StrCat("rank ", rank_, " cannot make ", grow[rank_] >> 20, " MiB of shared memory (", name, "): ",
                       std::strerror(error));
    } else {
      own.data = static_cast<std::byte*>(data);
      own.bytes = grow[rank_];
    }
  }
  std::vector<int64_t> failed = {failure.empty() ? 0 : 1};
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(failed), deadline));
  if (failed[0] > 0) {
    return absl::ResourceExhaustedError(failure.empty() ? StrCat(failed[0], " rank(s) could not make shared memory") : failure);
  }
  // 2. Everyone maps the peers' new segments.
  for (int r = 0; r < world && failure.empty(); ++r) {
    if (r == rank_ || grow[r] == 0) continue;
    Map& m = maps_[r];
    if (m.data != nullptr) munmap(m.data, static_cast<size_t>(m.bytes));
    m = Map{.data = nullptr, .bytes = 0, .generation = m.generation + 1};
    const std::string name = Name(r, m.generation);
    int fd = shm_open(name.c_str(), O_RDWR, 0600);
    void* data = fd >= 0 ? mmap(nullptr, static_cast<size_t>(grow[r]), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                         : MAP_FAILED;
    if (data == MAP_FAILED) failure = StrCat("rank ", rank_, " cannot map rank ", r, "'s shared memory (", name, "): ", std::strerror(errno));
    if (fd >= 0) close(fd);
    if (data != MAP_FAILED) m = Map{.data = static_cast<std::byte*>(data), .bytes = grow[r], .generation = m.generation};
  }
  failed = {failure.empty() ? 0 : 1};
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(failed), deadline));
  // 3. Mapped everywhere (or given up): the names can go.
  if (grow[rank_] > 0) shm_unlink(Name(rank_, maps_[rank_].generation).c_str());
  if (failed[0] > 0) {
    return absl::ResourceExhaustedError(failure.empty() ? StrCat(failed[0], " rank(s) could not map shared memory") : failure);
  }
  return absl::OkStatus();
}

}  // namespace moex::transport
