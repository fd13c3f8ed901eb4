// The per-rank driver of one MoE layer run: loads this rank's experts,
// makes the layer (CPU, or GPU through the plugin), runs the steps (tokens,
// live rebalancing, forward, figures), checks against the single-process
// computation, and tells its sinks. `moex run` and `moex worker` (a
// controller job's rank) both call RunLayer; launcher/cli only parses
// flags and prints errors.
#pragma once

#include <optional>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/job/run_config.h"
#include "moex/placement/placement.h"
#include "moex/run/sink.h"
#include "moex/transport/transport.h"

namespace moex::run {

// What a run needs from the controller that launched it (cluster
// implements it over gRPC); `moex run` has none.
class ControllerLink {
 public:
  virtual ~ControllerLink() = default;
  // The placement the job starts on; every rank asks.
  virtual absl::StatusOr<placement::Placement> StartPlacement() = 0;
  // Rank 0, before each step: a placement the controller published with a
  // version above `serving_version`, if any (a failure to fetch it is
  // reported by the link and is not the job's end).
  virtual std::optional<placement::Placement> PublishedAfter(int64_t serving_version) = 0;
  // The controller asked the job to stop (heartbeats bring it).
  virtual bool cancelled() const = 0;
};

// Runs `config` on this rank over `transport` (collective: every rank of
// the transport calls it with the same config). Sinks are called in order;
// `controller` may be null. An error says what failed on this rank.
absl::Status RunLayer(const job::RunConfig& config, transport::Transport& transport,
                      std::span<RunSink* const> sinks, ControllerLink* controller);

}  // namespace moex::run
