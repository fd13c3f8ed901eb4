// The controller's side of a job's ranks: registration, heartbeats and
// step reports (JobManager's methods, kept apart from the job lifecycle in
// job_manager.cc).
#include <algorithm>

#include "moex/cluster/job_manager.h"
#include "moex/core/str_cat.h"

namespace moex::cluster {

using moex::v1::Job;
using moex::v1::JobState;

absl::StatusOr<moex::v1::RegisterRankResponse> JobManager::RegisterRank(const moex::v1::RegisterRankRequest& r) {
  moex::v1::RegisterRankResponse response;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(r.job_id());
    if (it == jobs_.end()) return absl::NotFoundError(StrCat("no job '", r.job_id(), "'"));
    Entry& entry = it->second;
    if (IsTerminal(entry.job.state())) {
      return absl::FailedPreconditionError(StrCat("job ", r.job_id(), " has ended (", JobState_Name(entry.job.state()), ")"));
    }
    if (r.world_size() != World(entry.job) || r.rank() < 0 || r.rank() >= r.world_size()) {
      return absl::InvalidArgumentError(StrCat("rank ", r.rank(), " of ", r.world_size(), " does not fit job ",
                                               r.job_id(), " of ", World(entry.job), " ranks"));
    }
    bool known = false;
    for (const auto& rank : entry.job.ranks()) known |= rank.rank() == r.rank();
    if (!known) {
      auto* info = entry.job.add_ranks();
      info->set_rank(r.rank());
      info->set_host(r.host());
      info->set_pid(r.pid());
      info->set_device(r.device());
      entry.job.set_ranks_registered(entry.job.ranks_size());
    }
    entry.last_heartbeat[r.rank()] = Clock::now();
    if (entry.job.state() == moex::v1::JOB_STATE_PENDING && entry.job.ranks_registered() == World(entry.job)) {
      entry.job.set_state(moex::v1::JOB_STATE_RUNNING);
      entry.job.set_start_time_unix_ms(NowMs());
      entry.job.set_message("running");
    }
    Persist(entry);
    *response.mutable_spec() = entry.job.spec();
    response.set_placement_version(std::max<int64_t>(1, entry.job.placement().version()));
    if (entry.job.attempts_size() > 0) response.set_first_step(entry.job.attempts(entry.job.attempts_size() - 1).first_step());
    response.set_weight_cache_dir(WeightCacheDir(entry.job));
  }
  Notify(r.job_id());
  return response;
}

absl::StatusOr<moex::v1::HeartbeatResponse> JobManager::Heartbeat(const moex::v1::HeartbeatRequest& r) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return absl::NotFoundError(StrCat("no job '", r.job_id(), "'"));
  Entry& entry = it->second;
  entry.last_heartbeat[r.rank()] = Clock::now();
  if (r.done()) entry.done_ranks.insert(r.rank());
  if (entry.adopted && !IsTerminal(entry.job.state()) &&
      static_cast<int>(entry.last_heartbeat.size()) == World(entry.job) &&
      entry.job.message().rfind("the controller restarted", 0) == 0) {
    entry.job.set_message("re-adopted after a controller restart: every rank reported back in");
    Persist(entry);
  }
  moex::v1::HeartbeatResponse response;
  response.set_cancel(it->second.cancel_requested || IsTerminal(it->second.job.state()));
  response.set_placement_version(std::max<int64_t>(1, it->second.job.placement().version()));
  return response;
}

absl::StatusOr<moex::v1::ReportStepResponse> JobManager::ReportStep(const moex::v1::ReportStepRequest& r) {
  moex::v1::ReportStepResponse response;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(r.job_id());
    if (it == jobs_.end()) return absl::NotFoundError(StrCat("no job '", r.job_id(), "'"));
    Entry& entry = it->second;
    Job& job = entry.job;
    entry.last_heartbeat[r.rank()] = Clock::now();
    response.set_placement_version(std::max<int64_t>(1, job.placement().version()));
    if (r.rank() != 0 || IsTerminal(job.state())) return response;
    const int64_t live_before = job.metrics().placement_version();
    *job.mutable_metrics() = r.metrics();
    if (job.attempts_size() > 0 && r.metrics().experts_from_cache() + r.metrics().experts_loaded() > 0) {
      moex::v1::Attempt* current = job.mutable_attempts(job.attempts_size() - 1);
      current->set_experts_from_cache(r.metrics().experts_from_cache());
      current->set_experts_loaded(r.metrics().experts_loaded());
    }
    *job.mutable_tokens_per_expert() = r.tokens_per_expert();
    if (!r.bench().empty()) *job.mutable_bench() = r.bench();
    RecordLoad(entry, r);
    if (r.metrics().placement_version() > live_before) {
      for (auto& record : *job.mutable_rebalances()) {
        if (record.version() <= r.metrics().placement_version() && record.live_at_step() == 0) record.set_live_at_step(r.step() + 1);
      }
    }
    MaybeRebalance(entry);
    response.set_placement_version(std::max<int64_t>(1, job.placement().version()));
    // Running figures reach the disk within a second (the monitor loop), not
    // with an fsync on every step's report: that would pace the job.
    entry.unsaved = true;
  }
  Notify(r.job_id());
  return response;
}

}  // namespace moex::cluster
