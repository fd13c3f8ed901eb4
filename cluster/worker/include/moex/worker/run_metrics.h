// `moex run --metrics-listen ADDR`: rank 0 of a run without a controller
// serves the same per-job metrics a controller serves for its jobs
// (moex_job_*, moex_expert_tokens; cluster/metrics.h), labelled
// job_id="run" (Prometheus's `instance` tells runs apart), plus process_*.
// Served while the run runs.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "moex/cluster/metrics.h"
#include "moex/run/sink.h"
#include "moex/v1/job.pb.h"
#include "prometheus/collectable.h"

namespace moex::worker {

class RunMetrics final : public run::RunSink, public prometheus::Collectable {
 public:
  explicit RunMetrics(std::string job_id) { job_.set_id(std::move(job_id)); }
  void OnStart(const run::RunHeader& header) override;
  void OnRebalance(int64_t step, const balance::RebalanceEvent& event, bool live) override;
  void OnStep(const run::StepSummary& summary, const run::RunProgress& progress) override;
  absl::Status OnFinish(const run::RunResult& result) override;
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  void Update(const run::RunProgress& progress);
  mutable std::mutex mutex_;
  moex::v1::Job job_;
  int64_t window_ = 4;  // steps the per-expert tokens are summed over
};

// Serves `metrics` at `listen` (the --metrics-listen flag's value).
absl::StatusOr<std::unique_ptr<cluster::MetricsEndpoint>> ServeRunMetrics(const std::string& listen,
                                                                          std::shared_ptr<RunMetrics> metrics);

}  // namespace moex::worker
