// What every Transport must do, checked on every rank. The in-process test
// runs these in threads; the MPI/UCX test runs them under mpirun. A new
// transport gets the whole suite by calling RunConformance.
#pragma once

#include "moex/transport/transport.h"

namespace moex::transport::testing {

// Runs every check below on this rank (all ranks must call it).
void RunConformance(Transport& transport);

void CheckAllToAllV(Transport& transport);      // uneven and empty blocks, self block
void CheckAllToAllVOffsets(Transport& transport);  // blocks placed by offsets, gaps untouched
void CheckPointToPoint(Transport& transport);   // ring of sends, tags kept apart
void CheckAllReduce(Transport& transport);      // same bits on every rank
void CheckManyOperations(Transport& transport); // sequence numbers stay aligned
void CheckBadArguments(Transport& transport);   // clear errors, no hang

// Rank `absent` skips one barrier; every other rank must get a deadline error
// naming it. Returns nothing: checks with EXPECT_*.
void CheckMissingRankIsNamed(Transport& transport, int absent);

}  // namespace moex::transport::testing
