// What a bench job measures: one point (a layer shape, a token count, a
// routing skew) and a sweep of points, with their bounds. `moex bench` runs
// them (runtime/bench); the controller validates a bench job's spec with
// them, without linking the benchmark itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moex::job {

struct BenchPoint {
  int64_t ranks = 0;            // filled from the transport
  int64_t tokens_per_rank = 1024;
  int64_t hidden = 1024;
  int64_t top_k = 4;
  int64_t experts = 32;
  int64_t expert_width = 256;   // the layer's experts (with `layer`)
  double skew = 0;              // Zipf exponent of expert popularity; 0: uniform
  bool layer = true;            // also time the whole layer
  std::string transport;        // filled from the transport
  std::string scaling;          // "weak", "strong" or "" (a label of the sweep)
};

// A point's bad field is named (tokens_per_rank, hidden, ...).
absl::Status ValidatePoint(const BenchPoint& point);

// A sweep: the cartesian product of the lists, over the rank counts.
// "weak" keeps tokens per rank; "strong" keeps total_tokens and gives each
// of R ranks total_tokens / R; "grid" takes tokens_per_rank as given.
struct SweepSpec {
  std::string scaling = "weak";
  std::vector<int64_t> ranks = {1, 2, 4};
  std::vector<std::string> transports = {"mpi"};
  std::vector<int64_t> tokens_per_rank = {1024};
  std::vector<int64_t> total_tokens = {4096};  // strong scaling
  std::vector<int64_t> hidden = {1024};
  std::vector<int64_t> top_k = {4};
  std::vector<int64_t> experts = {32};
  std::vector<int64_t> expert_width = {256};
  std::vector<double> skew = {0};
  bool layer = true;
};

// The points one world size and transport runs, in order; an error names a
// bad list or a point that cannot run (and which).
absl::StatusOr<std::vector<BenchPoint>> ExpandSweep(const SweepSpec& spec, int64_t ranks,
                                                    const std::string& transport);
// How many points the whole sweep runs.
absl::StatusOr<int64_t> CountSweep(const SweepSpec& spec);

}  // namespace moex::job
