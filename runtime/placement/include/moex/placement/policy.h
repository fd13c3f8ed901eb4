// moex's placement policy: the same budget as EPLB (slots, nodes, GPUs, and
// EPLB's structure: with hierarchical balancing, an expert group's replicas
// stay on the node EPLB gives the group), a lower max/mean per-GPU load, and,
// told the current placement, far fewer expert weights moved.
//
// How, per layer:
//   1. Start from EPLB's placement (groups onto nodes, replicas, packing).
//   2. Local search, always on the hottest GPU, over two kinds of move:
//      - exchanges: k of its replicas for k of another GPU of the node, every
//        k up to half a GPU's slots (while a GPU has at most 1000 such
//        subsets), so any split of the two GPUs' replicas where they are
//        few; the exchange that leaves the pair closest to even;
//      - transfers: a redundant replica of expert x becomes one more replica
//        of expert y, where x's replica is on the hot GPU or y is on it (y's
//        load per replica then drops on every GPU holding it): replica counts
//        change, not only where replicas sit.
//      A move is taken only when every GPU it touches ends below the old
//      maximum, so the maximum never grows: never worse than EPLB.
//   3. Stuck more than 0.1% above a simple bound (the mean GPU load, a
//      node's load over its GPUs, the hottest expert over the most replicas
//      it can have), kicks: one of the best transfers of the hot GPU that the
//      search refused (some GPU ends too high), then the local search again,
//      kept only if it ends lower (at most 16 per local optimum, 128 in all). From scratch
//      the search stops within 0.01% of that bound.
//   4. Two replicas of one expert on one GPU (EPLB's packing makes some) are
//      split by a swap that raises no GPU above the maximum, unless the
//      expert has more replicas than GPUs to put them on. No move of moex
//      puts two replicas of an expert on a GPU otherwise.
//   5. With a current placement: GPUs (and nodes) are relabelled to keep as
//      many current (GPU, expert) pairs as possible (an optimal assignment),
//      and the same search is also run from the current placement itself,
//      exchanges of fewer replicas first, until it reaches the from-scratch
//      balance. In both, swaps then take experts back to a GPU of the node
//      that holds them now while no GPU passes the from-scratch maximum.
//      The plan that moves fewer experts wins. Balance is never traded for
//      fewer moves.
// Deterministic: the same input gives the same plan.
#pragma once

#include <cstdint>
#include <string>
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

// The policies by name: "eplb" (DeepSeek's EPLB, as published) and
// "refined" (EPLB's placement refined by the local search above; told the
// current placement, the plan that moves fewest experts at that balance).
// "moex", the refined policy's first name, is still read.
inline constexpr std::string_view kDefaultPolicy = "refined";
inline constexpr std::string_view kPolicyNames = "refined, eplb";
// The policy's name as records keep it ("moex" becomes "refined"); the
// error lists the known names.
absl::StatusOr<std::string> CanonicalPolicy(std::string_view name);

// `policy`: one of the names above.
absl::StatusOr<EplbPlacement> PlanPlacement(std::string_view policy, const PlanInput& input);

// Checks what both policies need; the error names the flag at fault.
absl::Status CheckPlanInput(const PlanInput& input);

// (GPU, expert) pairs of `next` that `current` lacks, summed over layers:
// the expert weights that must travel.
int64_t CountMoves(const IndexMatrix& current, const IndexMatrix& next, int64_t num_gpus);

// phy2log -> the full placement (phyrank, logcnt, log2phy).
EplbPlacement FromPhy2Log(IndexMatrix phy2log, int64_t num_logical);

// A lower bound on the max per-GPU load of any placement with this budget,
// num_replicas / num_gpus slots on every GPU (per layer): at least the mean
// GPU load and the hottest expert over the most replicas it can spread over,
// raised by what the slot count adds: each expert needs replicas enough that
// the GPUs holding one, with their other slots filled by the lightest loads
// any slot can carry, average at most the bound, and all experts' needs must
// fit in the slots. Valid for hierarchical placements too (they are
// placements), which can be held further up by a node's load.
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
