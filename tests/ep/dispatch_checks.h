// What Dispatch and Combine must deliver, checked on one rank (every rank
// calls it). Token rows are valued by (source rank, token index, h), so
// that where each received row came from, its place in the order and its
// content are all checked; the experts' stand-in scales each row by its
// rank, so that what Combine adds back is checked too. All values are small
// integers: every sum is exact, whatever the order.
//
// dispatch_test.cc runs it on in-process ranks (threads),
// dispatch_mpi_test.cc under real mpirun.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "moex/ep/dispatch.h"
#include "moex/transport/transport.h"

namespace moex::ep::testing {

struct DispatchCase {
  std::string name;
  std::vector<int64_t> tokens;  // [W] local tokens of each rank (uneven, some 0)
  int64_t experts = 8;
  int64_t top_k = 2;
  int64_t redundant = 0;  // replicas
  int idle_rank = -1;     // no token picks an expert this rank serves
  int64_t hidden = 16;
};

inline void PrintTo(const DispatchCase& c, std::ostream* os) { *os << c.name; }

// The test's cases, world sizes 1 to 5 (those of `world` when > 0).
std::vector<DispatchCase> DispatchCases(int world = 0);

// One dispatch + combine of `c` on this rank; `seed` varies the routing
// between rounds. With `tensor_partial`, the partial sums go to Combine in
// a Tensor of their own (copied to where the path wants them). Checks with
// EXPECT_*; returns false when a call failed (the rank's peers may then be
// waiting: the caller stops).
// `split` says where the ranks are (one host when null): the hierarchical
// path's row order and every path's byte counts depend on it.
struct HostSplit;
bool CheckDispatchAndCombine(transport::Transport& transport, Dispatcher& dispatcher, const DispatchCase& c,
                             int seed, bool tensor_partial = false, const HostSplit* split = nullptr);

// One dispatch + combine of `c` with values that are not small integers,
// so that the order in which the sums are added shows in the bits: this
// rank's output y [T, H], to compare between paths bit for bit; nullopt
// when a call failed (with EXPECT_*).
// With `read_back_fp8`, the rows dispatched are x's rows as their fp8 form
// reads back (kernels/fp8_rows.h), and y still starts as x: what a
// dispatcher on DispatchDtype::kFp8 must give from x itself.
std::optional<Tensor> CombinedOutput(transport::Transport& transport, Dispatcher& dispatcher, const DispatchCase& c,
                                     int seed, bool read_back_fp8 = false);

// Ranks spread over "hosts": rank r on host host_of[r] (hosts numbered in
// the order of their lowest rank, as transport::HostMap numbers them).
// Tests stand a host up as a segment directory of its own.
struct HostSplit {
  std::string name;          // "0011": the host of each rank
  std::vector<int> host_of;  // [W]
  int num_hosts() const;
  // What kAuto takes for this split (probes that work; hierarchical
  // unless `flat`).
  DispatchPath AutoPath(bool flat = false) const;
  // transport::HostMap::Describe() for it, every host named `host_name`:
  // "4 ranks on 2 hosts: node (ranks 0, 1), node (ranks 2, 3)".
  std::string Describe(const std::string& host_name) const;
};

inline void PrintTo(const HostSplit& split, std::ostream* os) { *os << "hosts " << split.name; }

// For `world` ranks: one host, every rank alone, and (from 3 ranks) splits
// in between, contiguous and interleaved: 3 as {0, 1}, {2}; 4 as {0, 1},
// {2, 3} and {0, 2}, {1, 3}; 5 as {0, 1, 2}, {3}, {4} and {0, 3}, {1, 2}, {4}.
std::vector<HostSplit> HostSplits(int world);

// A segment directory for each host of a split, base/host0, base/host1, ...:
// ranks with different directories are on different hosts.
class HostDirectories {
 public:
  // A fresh base in /dev/shm with every host's directory in it (for ranks
  // in this process); at the end, checks that nothing was left in them
  // (segments and probe files are unlinked as soon as they are mapped or
  // looked for) and removes them.
  explicit HostDirectories(HostSplit split);
  // Only the names, under `base` (processes under mpirun make and remove
  // their own).
  HostDirectories(HostSplit split, std::string base) : split_(std::move(split)), base_(std::move(base)) {}
  ~HostDirectories();
  HostDirectories(const HostDirectories&) = delete;
  HostDirectories& operator=(const HostDirectories&) = delete;

  const std::string& base() const { return base_; }
  std::string of_host(int host) const;
  std::string of(int rank) const { return of_host(split_.host_of[rank]); }
  // `path`, with rank `rank`'s segment directory.
  DispatchOptions options(int rank, DispatchPath path) const;
  // What path_reason() says of them: "segments in D" on one host, else
  // "segments in D0 (ranks 0, 1), D1 (rank 2)".
  std::string Segments() const;

 private:
  HostSplit split_;
  std::string base_;
  bool owned_ = false;
};

// What path_reason() says of the hierarchical path, given where the ranks
// are (HostSplit::Describe) and their segments (HostDirectories::Segments).
std::string HierarchicalReason(const std::string& where, const std::string& segments);

// gethostname(), for the words of HostMap::Describe.
std::string ThisHostName();

// Runs `body(rank, transport)` on every rank of a fresh in-process hub, one
// thread each.
void OnEveryRank(int world, const std::function<void(int, transport::Transport&)>& body);

// Every case of DispatchCases() with every split of its ranks into hosts.
std::vector<std::tuple<DispatchCase, HostSplit>> CasesOnEveryHostSplit();

}  // namespace moex::ep::testing
