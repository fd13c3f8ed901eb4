#include "moex/worker/worker_run_link.h"

#include <unistd.h>

#include "moex/core/str_cat.h"
#include "worker_warn.h"

namespace moex::worker {

using internal::Warn;

std::optional<placement::Placement> WorkerRunLink::PublishedAfter(int64_t serving_version) {
  if (session_.placement_version() <= serving_version) return std::nullopt;
  absl::StatusOr<placement::Placement> fetched = session_.FetchPlacement();
  if (!fetched.ok()) {
    Warn(rank_, StrCat("cannot fetch placement version ", session_.placement_version(), ": ", fetched.status().message()));
    return std::nullopt;
  }
  return std::move(*fetched);
}

void WorkerRunLink::OnStep(const run::StepSummary&, const run::RunProgress& progress) { Report(progress); }

absl::Status WorkerRunLink::OnFinish(const run::RunResult& result) {
  Report(result.progress);
  return absl::OkStatus();
}

moex::v1::JobMetrics JobMetricsOf(const run::RunProgress& progress) {
  moex::v1::JobMetrics metrics;
  if (progress.steps == nullptr || progress.steps->empty()) return metrics;
  const run::Medians m = run::MeasuredMedians(*progress.steps);
  metrics.set_tokens_per_second(m.rate);
  metrics.set_dispatch_seconds(m.dispatch);
  metrics.set_combine_seconds(m.combine);
  metrics.set_imbalance(m.imbalance);
  metrics.set_steps_done(progress.steps_done);
  metrics.set_check_relative_error(progress.check_error < 0 ? 0 : progress.check_error);
  metrics.set_placement_version(progress.placement_version);
  metrics.set_experts_from_cache(progress.experts_from_cache);
  metrics.set_experts_loaded(progress.experts_loaded);
  return metrics;
}

// Every rank's heartbeat says which step it is on; rank 0 tells the
// controller how the job goes.
void WorkerRunLink::Report(const run::RunProgress& progress) {
  session_.SetStep(progress.steps_done);
  if (rank_ != 0 || progress.steps->empty()) return;
  absl::Status status = session_.ReportStep(progress.steps_done, JobMetricsOf(progress),
                                            progress.steps->back().tokens_per_expert, progress.final);
  if (!status.ok()) Warn(rank_, std::string(status.message()));
}

}  // namespace moex::worker
