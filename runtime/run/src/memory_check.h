// Before any weight is loaded: does this rank's layer fit in the memory it
// may use? What it needs (its experts in their stored dtype, the shared
// expert, its buffers, and on rank 0 what --check adds) against what it may
// use: its address-space limit (RLIMIT_AS), its cgroup's memory.max and the
// host's MemAvailable, the last two shared by the ranks of the host. When a
// host does not fit, every rank says so in one line and the run ends: no
// bad_alloc, no OOM kill. Private to the run loop (runner.cc).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "moex/core/deadline.h"
#include "moex/core/stored_matrix.h"
#include "moex/ep/moe_weights.h"
#include "moex/transport/transport.h"

namespace moex::run {

struct MemoryNeed {
  int64_t experts = 0;    // routed experts held, stored dtype, that are not in the host's weight cache yet
  int64_t cache = 0;      // their copy into the weight cache (/dev/shm: memory, never reclaimed)
  int64_t shared = 0;     // the shared expert
  int64_t buffers = 0;    // tokens, dispatch, expert workspaces
  int64_t reference = 0;  // rank 0 with --check: every expert (mapped: 0) and its fp32 copy of one
  int64_t mapped = 0;     // of the above, file mappings (address space and page cache, not anonymous memory)
  int64_t total() const { return experts + cache + shared + buffers + reference; }
};

// `cached_experts` of the `local_experts` are in the host's weight cache
// already (mapped from it: no new memory); with `caching`, the others are
// put there as they load.
MemoryNeed EstimateNeed(const ep::MoeLayerSpec& spec, int64_t local_experts, int64_t cached_experts, bool caching,
                        WeightFormat format, bool mapped, int64_t tokens_per_rank, int world, bool reference);

// What this process may use, each limit with its name; -1 where there is
// none (MemAvailable: moex/core/host_memory.h).
struct MemoryLimits {
  int64_t address_space = -1;  // RLIMIT_AS less the address space in use
  int64_t cgroup = -1;         // memory.max less memory.current
  int64_t mem_available = -1;  // /proc/meminfo
};
MemoryLimits ReadMemoryLimits();

// This process's peak resident set (VmHWM), bytes; -1 when unknown.
int64_t PeakResidentBytes();

// Collective. Gathers each rank's need and host; fails on every rank (the
// rank's own line says whether it or its host is short, by how much, and
// what would make it fit) when any rank does not fit.
absl::Status CheckMemoryFits(const ep::MoeLayerSpec& spec, const MemoryNeed& need, WeightFormat format,
                             transport::Transport& t, Deadline deadline);

}  // namespace moex::run
