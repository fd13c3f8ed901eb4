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
#include <ostream>
#include <string>
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
bool CheckDispatchAndCombine(transport::Transport& transport, Dispatcher& dispatcher, const DispatchCase& c,
                             int seed, bool tensor_partial = false);

}  // namespace moex::ep::testing
