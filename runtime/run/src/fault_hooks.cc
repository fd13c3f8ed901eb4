#include "fault_hooks.h"

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

namespace moex::run {
namespace {

bool IsRank(const char* variable, int rank) {
  const char* value = std::getenv(variable);
  return value != nullptr && std::atoi(value) == rank;
}

void Silence(double timeout_seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(timeout_seconds * 3 + 5));
}

}  // namespace

void MaybeStallBeforeStep(int rank, int64_t step, double timeout_seconds) {
  if (!IsRank("MOEX_FAULT_STALL_RANK", rank)) return;
  const char* stall_step = std::getenv("MOEX_FAULT_STALL_STEP");
  if ((stall_step != nullptr ? std::atoll(stall_step) : 0) != step) return;
  Silence(timeout_seconds);
}

void MaybeFailMigration(int rank, int64_t chunk, double timeout_seconds) {
  if (chunk != 0) return;
  if (IsRank("MOEX_FAULT_KILL_MIGRATION_RANK", rank)) raise(SIGKILL);
  if (IsRank("MOEX_FAULT_STALL_MIGRATION_RANK", rank)) Silence(timeout_seconds);
}

void MaybeSlowLoad(int rank) {
  const char* seconds = std::getenv("MOEX_FAULT_SLOW_LOAD_SECONDS");
  if (seconds == nullptr) return;
  if (std::getenv("MOEX_FAULT_SLOW_LOAD_RANK") != nullptr && !IsRank("MOEX_FAULT_SLOW_LOAD_RANK", rank)) return;
  std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(seconds)));
}

}  // namespace moex::run
