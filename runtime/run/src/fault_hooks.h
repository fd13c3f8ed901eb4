// Test hooks that make a rank fail on purpose, read from the environment
// (the chaos and missing-rank tests set them). Private to the run layer.
#pragma once

#include <cstdint>

namespace moex::run {

// MOEX_FAULT_STALL_RANK=r makes rank r go silent (alive, not answering)
// before step MOEX_FAULT_STALL_STEP (default 0), for longer than any
// deadline of `timeout_seconds`.
void MaybeStallBeforeStep(int rank, int64_t step, double timeout_seconds);
// Before migration chunk `chunk`: MOEX_FAULT_STALL_MIGRATION_RANK=r makes
// rank r go silent before the first chunk; MOEX_FAULT_KILL_MIGRATION_RANK=r
// makes it die (SIGKILL) there.
void MaybeFailMigration(int rank, int64_t chunk, double timeout_seconds);
// MOEX_FAULT_SLOW_LOAD_SECONDS=s makes the weight load take s seconds more:
// on rank MOEX_FAULT_SLOW_LOAD_RANK only, where that is set, else on every
// rank (a slow machine).
void MaybeSlowLoad(int rank);

}  // namespace moex::run
