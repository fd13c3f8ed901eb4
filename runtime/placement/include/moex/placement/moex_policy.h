// moex's placement policy: the same budget as EPLB (slots, nodes, GPUs, and
// EPLB's structure: with hierarchical balancing, an expert group's replicas
// stay on one node), a lower max/mean per-GPU load, and, told the current
// placement, far fewer expert weights moved.
//
// How, per layer:
//   1. Start from EPLB's placement (groups onto nodes, replicas, packing).
//   2. Local search, always on the hottest GPU: swap one of
//      its replicas with a lighter one on another GPU of the node, or move a
//      redundant replica from a cold expert to one of the hot GPU's experts
//      (its load per replica drops on every GPU holding it). A move is taken
//      only when every GPU it touches ends below the old maximum, so the
//      maximum never grows: never worse than EPLB, and lower wherever any
//      such move exists.
//   3. With a current placement: GPUs (and nodes) are relabelled to keep as
//      many current (GPU, expert) pairs as possible (an optimal assignment),
//      and the same local search is also run from the current placement
//      itself until it reaches the from-scratch balance; the plan that moves
//      fewer experts wins. Balance is never traded for fewer moves.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/placement/eplb.h"

namespace moex::placement {

struct PlanInput {
  Matrix load;  // [layers][logical experts]
  int64_t num_replicas = 0;
  int64_t num_groups = 1;
  int64_t num_nodes = 1;
  int64_t num_gpus = 1;
  // [layers][num_replicas]: the placement now (phy2log, GPU by GPU), or empty.
  IndexMatrix current;
};

// `policy` is "eplb" or "moex".
absl::StatusOr<EplbPlacement> PlanPlacement(std::string_view policy, const PlanInput& input);

// Checks what both policies need; the error names the flag at fault.
absl::Status CheckPlanInput(const PlanInput& input);

// (GPU, expert) pairs of `next` that `current` lacks, summed over layers:
// the expert weights that must travel.
int64_t CountMoves(const IndexMatrix& current, const IndexMatrix& next, int64_t num_gpus);

// phy2log -> the full placement (phyrank, logcnt, log2phy).
EplbPlacement FromPhy2Log(IndexMatrix phy2log, int64_t num_logical);

// A lower bound on the max per-GPU load of any placement with this budget
// and EPLB's structure (per layer): the mean GPU load, and the largest
// expert split over as many replicas as a GPU can take.
std::vector<double> LoadLowerBound(const Matrix& load, int64_t num_replicas, int64_t num_gpus);

}  // namespace moex::placement

namespace moex::placement {

// A skewed synthetic load: `tokens` routed pairs per layer spread over the
// experts by a Zipf law of exponent `skew`, the ranks of the experts shuffled
// per layer. Benchmarks and tests of the policies use it.
Matrix ZipfLoad(int64_t layers, int64_t experts, double skew, uint64_t seed, double tokens = 1e6);

// `load` after routing drifts: each expert's load scaled by a random factor
// in [1 - drift, 1 + drift].
Matrix Drift(const Matrix& load, double drift, uint64_t seed);

}  // namespace moex::placement
