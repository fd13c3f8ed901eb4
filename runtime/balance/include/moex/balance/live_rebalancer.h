// Live rebalancing of one running MoE layer.
//
// Each step, at its boundary, the leader (rank 0) says whether a new
// placement starts: one it planned itself (the window's imbalance is above
// the threshold, at least `interval` steps after the last change, or a step
// asked for), or one the controller published. The leader's word reaches
// every rank over the transport, with the placement itself, so all ranks
// agree on the version and the step. The moved experts' weights then travel
// in chunks after each step's forward pass (balance/migration.h) while the
// old placement keeps serving, and when the last chunk has landed the ranks
// confirm to each other and switch together before the next step.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/balance/migration.h"
#include "moex/core/deadline.h"
#include "moex/ep/layer.h"
#include "moex/placement/load_stats.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::balance {

struct RebalanceOptions {
  std::string policy = "refined";    // refined or eplb (placement/policy.h)
  double threshold = 0;              // window imbalance (max/mean rank load) that triggers; 0: never
  int64_t interval = 10;             // at least this many steps between placement changes
  int64_t window = 4;                // steps of load the decision looks at
  int64_t at_step = -1;              // also plan one at this step (tests, benchmarks)
  int64_t chunk_bytes = 64 << 20;    // migration bytes per step, all ranks together
  std::function<void(int64_t chunk)> before_chunk;  // test hook: runs before each chunk
  // Runs for each expert this rank received, once the migration landed and
  // before the new placement serves (the runner puts them in the host's
  // weight cache, so that a relaunch finds them on this host).
  std::function<void(int64_t expert, const ep::ExpertWeights& weights)> on_received;
  int64_t initial_version = 1;       // the version the layer serves at the start
};

struct RebalanceEvent {
  int64_t version = 0;
  std::string reason;
  int64_t decided_step = 0;  // the step before which it was decided
  int64_t live_step = -1;    // the first step it served, -1 while migrating
  double imbalance_before = 0;  // the window's load on the old and the new placement
  double imbalance_after = 0;
  int64_t experts_moved = 0;
  int64_t planned_bytes = 0; // what the migration will move (experts_moved x ep::ExpertBytes)
  int64_t bytes = 0;         // moved so far, all ranks
  int64_t chunks = 0;
  double seconds = 0;        // slowest rank, summed over chunks
};

class LiveRebalancer {
 public:
  // Checks that the layer's slots divide over the ranks, as the policies need.
  static absl::StatusOr<LiveRebalancer> Create(RebalanceOptions options, const ep::Layer& layer, int world_size);

  // Collective, before step `step`'s forward pass. `published` matters on
  // rank 0 only: a controller placement newer (by version) than the one
  // serving.
  absl::Status BeginStep(transport::Transport& t, ep::Layer& layer, int64_t step,
                         const std::optional<placement::Placement>& published, Deadline deadline);
  // Collective, after step `step`: records its load (tokens per logical
  // expert, summed over ranks), runs a migration chunk, switches when done.
  absl::Status EndStep(transport::Transport& t, ep::Layer& layer, int64_t step,
                       std::span<const int64_t> tokens_per_expert, Deadline deadline);

  int64_t version() const { return version_; }
  bool migrating() const { return migration_.has_value(); }
  const Migration* migration() const { return migration_ ? &*migration_ : nullptr; }
  const placement::LoadTracker& load() const { return tracker_; }
  const std::vector<RebalanceEvent>& events() const { return events_; }
  // The window's imbalance on the serving placement (1 with no load yet).
  double WindowImbalance(const placement::Placement& placement) const;

 private:
  LiveRebalancer(RebalanceOptions options, int64_t num_experts)
      : options_(std::move(options)), tracker_(num_experts, options_.window), last_change_step_(-options_.interval) {}

  // Rank 0: a placement to move to before `step`, if any.
  absl::StatusOr<std::optional<placement::Placement>> Decide(const ep::Layer& layer, int64_t step,
                                                             const std::optional<placement::Placement>& published,
                                                           std::string* reason, int world);

  RebalanceOptions options_;
  placement::LoadTracker tracker_;
  int64_t version_ = 1;
  int64_t last_change_step_;  // the first may come at once
  std::optional<Migration> migration_;
  std::vector<RebalanceEvent> events_;
};

}  // namespace moex::balance
