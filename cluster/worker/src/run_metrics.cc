#include "moex/worker/run_metrics.h"

#include <algorithm>

#include "moex/worker/worker_run_link.h"

namespace moex::worker {

void RunMetrics::OnStart(const run::RunHeader& header) {
  std::lock_guard<std::mutex> lock(mutex_);
  moex::v1::JobSpec* spec = job_.mutable_spec();
  spec->set_name("run");
  spec->set_model(header.model_source);
  spec->set_world_size(header.world_size);
  spec->set_transport(header.transport);
  if (header.config != nullptr) {
    spec->set_steps(static_cast<int32_t>(header.config->steps));
    spec->set_device(header.config->device);
    if (header.config->layer) spec->set_layer(static_cast<int32_t>(*header.config->layer));
    window_ = std::max<int64_t>(1, header.config->rebalance.window);
  }
  job_.set_world_size(header.world_size);
  job_.set_ranks_registered(header.world_size);
  job_.set_state(moex::v1::JOB_STATE_RUNNING);
  job_.add_attempts()->set_number(1);
}

void RunMetrics::OnRebalance(int64_t, const balance::RebalanceEvent& event, bool live) {
  if (live) return;  // counted once, when decided
  std::lock_guard<std::mutex> lock(mutex_);
  moex::v1::RebalanceRecord* record = job_.add_rebalances();
  record->set_version(event.version);
  record->set_experts_moved(event.experts_moved);
  job_.mutable_placement()->set_version(event.version);
}

void RunMetrics::OnStep(const run::StepSummary&, const run::RunProgress& progress) { Update(progress); }

absl::Status RunMetrics::OnFinish(const run::RunResult& result) {
  Update(result.progress);
  std::lock_guard<std::mutex> lock(mutex_);
  job_.set_state(moex::v1::JOB_STATE_SUCCEEDED);
  return absl::OkStatus();
}

void RunMetrics::Update(const run::RunProgress& progress) {
  if (progress.steps == nullptr || progress.steps->empty()) return;
  moex::v1::JobMetrics metrics = JobMetricsOf(progress);
  // The load window: the last window_ steps' routed tokens per expert.
  const auto& steps = *progress.steps;
  const size_t from = steps.size() > static_cast<size_t>(window_) ? steps.size() - static_cast<size_t>(window_) : 0;
  std::vector<double> window(steps.back().tokens_per_expert.size(), 0.0);
  int32_t counted = 0;
  for (size_t s = from; s < steps.size(); ++s) {
    if (steps[s].tokens_per_expert.size() != window.size()) continue;
    for (size_t e = 0; e < window.size(); ++e) window[e] += static_cast<double>(steps[s].tokens_per_expert[e]);
    ++counted;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  *job_.mutable_metrics() = metrics;
  if (job_.placement().version() < metrics.placement_version()) {
    job_.mutable_placement()->set_version(metrics.placement_version());
  }
  moex::v1::LoadStats* load = job_.mutable_load();
  load->set_steps(progress.steps_done);
  load->set_window_steps(counted);
  load->clear_window_tokens_per_expert();
  for (double tokens : window) load->add_window_tokens_per_expert(tokens);
}

std::vector<prometheus::MetricFamily> RunMetrics::Collect() const {
  return cluster::BuildOnOwnStack([this] {
    moex::v1::Job job;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job = job_;
    }
    cluster::FamilyBuilder out;
    cluster::AddJobFamilies(job, {}, out);
    cluster::AddProcessFamilies(out);
    return out.Take();
  });
}

absl::StatusOr<std::unique_ptr<cluster::MetricsEndpoint>> ServeRunMetrics(const std::string& listen,
                                                                          std::shared_ptr<RunMetrics> metrics) {
  return cluster::MetricsEndpoint::Start(listen, "--metrics-listen", std::move(metrics));
}

}  // namespace moex::worker
