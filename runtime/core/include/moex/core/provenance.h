// Where a result came from, written into every JSON result moex makes
// (`moex run --json`, `moex bench`, `moex plan --json`, the bench programs):
// the moex version and commit, the host and its CPU (and GPU, when one
// ran), the world size and transport, the command line and the date, so
// that a figure read later can be traced and reproduced.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace moex {

struct RunFacts {
  int world_size = 1;
  std::string transport;  // "mpi", "ucx", "nccl"; empty: none (a planner's answer)
  std::string gpu;        // the GPU that ran, e.g. "NVIDIA H200 (device 0)"; empty: none
};

// Keeps the command line for ProvenanceJson. Call first thing in main,
// before MPI_Init may rewrite argv.
void RecordCommandLine(int argc, const char* const* argv);

// {"moex_version", "commit", "host", "cpu", "gpu", "world_size",
//  "transport", "command_line", "date"}: the date in UTC (ISO 8601), the
// CPU's model name from /proc/cpuinfo ("unknown" where absent).
nlohmann::json ProvenanceJson(const RunFacts& facts = {});

}  // namespace moex
