// A controller job's rank: the run loop's link to the controller (the
// starting and published placements, the cancel flag) and its sink (each
// step's figures reported by rank 0, every rank's step in its heartbeat),
// over the rank's WorkerSession.
#pragma once

#include "moex/worker/worker_session.h"
#include "moex/run/runner.h"
#include "moex/run/sink.h"

namespace moex::worker {

// A run's figures so far as the controller keeps them (medians over the
// steps; empty before the first step).
moex::v1::JobMetrics JobMetricsOf(const run::RunProgress& progress);

class WorkerRunLink final : public run::ControllerLink, public run::RunSink {
 public:
  explicit WorkerRunLink(WorkerSession& session, int rank) : session_(session), rank_(rank) {}

  absl::StatusOr<placement::Placement> StartPlacement() override { return session_.FetchPlacement(); }
  std::optional<placement::Placement> PublishedAfter(int64_t serving_version) override;
  bool cancelled() const override { return session_.cancelled(); }

  void OnStep(const run::StepSummary& summary, const run::RunProgress& progress) override;
  absl::Status OnFinish(const run::RunResult& result) override;

 private:
  void Report(const run::RunProgress& progress);

  WorkerSession& session_;
  int rank_;
};

}  // namespace moex::worker
