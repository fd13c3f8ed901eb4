// The controller's side of a job's ranks: registration, heartbeats and
// step reports (JobManager's methods, kept apart from the job lifecycle in
// job_manager.cc).
#include <algorithm>

#include "moex/cluster/job_manager.h"
#include "moex/launcher/hostfile.h"
#include "moex/core/status_macros.h"
#include "moex/core/log.h"
#include "moex/core/str_cat.h"

namespace moex::cluster {

using moex::v1::Job;
using moex::v1::JobState;

namespace {

// The attempt a call is about: the one it said, else the current one.
int CurrentAttempt(const Job& job) { return std::max(1, job.attempts_size()); }

}  // namespace

// A refused call changes nothing: not the rank's last heartbeat, not the
// job's figures. So one hostile or stray call (a rank of a killed attempt,
// a rank number from nowhere, a step from the future) can neither keep a
// dead rank alive, nor fail or restart a healthy job, nor freeze its load.
absl::StatusOr<JobManager::Entry*> JobManager::RankCallEntry(std::string_view call, const std::string& job_id,
                                                             int rank, int attempt) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(StrCat(call, ": no job '", job_id, "'"));
  Entry& entry = it->second;
  const int current = CurrentAttempt(entry.job);
  const int said = attempt == 0 ? current : attempt;
  const std::string who = StrCat(call, " for job ", job_id, " attempt ", said, " rank ", rank);
  if (attempt < 0) return absl::InvalidArgumentError(StrCat(who, ": its attempt metadata is not a number"));
  if (attempt > current) {
    return absl::InvalidArgumentError(StrCat(who, ": attempt ", attempt, " was never launched (the current one is ",
                                             current, ")"));
  }
  if (IsTerminal(entry.job.state())) {
    return absl::FailedPreconditionError(StrCat(who, ": the job has ended (", JobState_Name(entry.job.state()), ")"));
  }
  if (said != current) {
    return absl::FailedPreconditionError(StrCat(who, ": attempt ", said, " has ended (attempt ", current, " runs)"));
  }
  if (rank < 0 || rank >= World(entry.job)) {
    return absl::InvalidArgumentError(StrCat(who, ": rank ", rank, " is outside the attempt's ", World(entry.job),
                                             " ranks (0 to ", World(entry.job) - 1, ")"));
  }
  return &entry;
}

absl::StatusOr<moex::v1::RegisterRankResponse> JobManager::RegisterRank(const moex::v1::RegisterRankRequest& r,
                                                                        int attempt) {
  moex::v1::RegisterRankResponse response;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    MOEX_ASSIGN_OR_RETURN(Entry * found, RankCallEntry("RegisterRank", r.job_id(), r.rank(), attempt));
    Entry& entry = *found;
    if (r.world_size() != World(entry.job)) {
      return absl::InvalidArgumentError(StrCat("RegisterRank for job ", r.job_id(), " attempt ", CurrentAttempt(entry.job),
                                               " rank ", r.rank(), ": world_size ", r.world_size(),
                                               " is not the attempt's ", World(entry.job), " ranks"));
    }
    // Its host name reaches launcher argv (exclusions, cleanup): names only.
    if (absl::Status host = launcher::ValidateHostName(r.host()); !host.ok()) {
      return absl::InvalidArgumentError(StrCat("RegisterRank for job ", r.job_id(), " rank ", r.rank(), ": host ",
                                               host.message()));
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
    if (!r.launcher_job_id().empty() && entry.job.attempts_size() > 0) {
      moex::v1::Attempt* current = entry.job.mutable_attempts(entry.job.attempts_size() - 1);
      if (current->launcher_job_id().empty()) current->set_launcher_job_id(r.launcher_job_id().substr(0, 64));
    }
    entry.last_heartbeat[r.rank()] = Clock::now();
    if (entry.job.state() == moex::v1::JOB_STATE_PENDING && entry.job.ranks_registered() == World(entry.job)) {
      entry.job.set_state(moex::v1::JOB_STATE_RUNNING);
      entry.job.set_start_time_unix_ms(NowMs());
      entry.job.set_message("running");
      log::Info("job running: every rank registered", {{"job_id", entry.job.id()},
                                                      {"attempt", std::to_string(CurrentAttemptNumber(entry.job))},
                                                      {"world_size", std::to_string(World(entry.job))}});
    }
    Persist(entry);
    *response.mutable_spec() = entry.job.spec();
    response.set_placement_version(std::max<int64_t>(1, entry.job.placement().version()));
    if (entry.job.attempts_size() > 0) response.set_first_step(entry.job.attempts(entry.job.attempts_size() - 1).first_step());
    response.set_weight_cache_dir(WeightCacheDir(entry.job));
    response.set_heartbeat_interval_ms(
        static_cast<int32_t>(std::clamp(options_.heartbeat_timeout_seconds * 1000.0 / 4.0, 100.0, 1000.0)));
  }
  Notify(r.job_id());
  return response;
}

absl::StatusOr<moex::v1::HeartbeatResponse> JobManager::Heartbeat(const moex::v1::HeartbeatRequest& r, int attempt) {
  std::lock_guard<std::mutex> lock(mutex_);
  MOEX_ASSIGN_OR_RETURN(Entry * found, RankCallEntry("Heartbeat", r.job_id(), r.rank(), attempt));
  Entry& entry = *found;
  auto said = entry.heartbeat_step.find(r.rank());
  const int64_t floor = said == entry.heartbeat_step.end() ? 0 : said->second;
  if (r.step() < floor || r.step() > entry.job.spec().steps()) {
    return absl::InvalidArgumentError(StrCat("Heartbeat for job ", r.job_id(), " attempt ", CurrentAttempt(entry.job),
                                             " rank ", r.rank(), ": step ", r.step(),
                                             r.step() < floor ? StrCat(" goes back from step ", floor)
                                                              : StrCat(" is past the job's ", entry.job.spec().steps(), " steps")));
  }
  entry.heartbeat_step[r.rank()] = r.step();
  entry.last_heartbeat[r.rank()] = Clock::now();
  if (r.done()) entry.done_ranks.insert(r.rank());
  if (entry.awaiting_readoption && static_cast<int>(entry.last_heartbeat.size()) == World(entry.job)) {
    entry.awaiting_readoption = false;
    entry.job.set_message("re-adopted after a controller restart: every rank reported back in");
    Persist(entry);
  }
  moex::v1::HeartbeatResponse response;
  response.set_cancel(entry.cancel_requested);
  response.set_placement_version(std::max<int64_t>(1, entry.job.placement().version()));
  return response;
}

absl::StatusOr<moex::v1::ReportStepResponse> JobManager::ReportStep(const moex::v1::ReportStepRequest& r, int attempt) {
  moex::v1::ReportStepResponse response;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    MOEX_ASSIGN_OR_RETURN(Entry * found, RankCallEntry("ReportStep", r.job_id(), r.rank(), attempt));
    Entry& entry = *found;
    Job& job = entry.job;
    // Rank 0's steps only go forward, across attempts too (a relaunch
    // resumes after the last one reported); a repeated report (the final
    // one, retried) is fine. The figures' own step count must agree.
    const int64_t floor = r.rank() == 0 ? job.metrics().steps_done() : 0;
    const std::string who = StrCat("ReportStep for job ", r.job_id(), " attempt ", CurrentAttempt(job), " rank ", r.rank());
    if (r.step() < floor || r.step() > job.spec().steps()) {
      return absl::InvalidArgumentError(StrCat(who, ": step ", r.step(),
                                               r.step() < floor ? StrCat(" goes back from step ", floor)
                                                                : StrCat(" is past the job's ", job.spec().steps(), " steps")));
    }
    if (r.metrics().steps_done() != r.step()) {
      return absl::InvalidArgumentError(StrCat(who, ": metrics.steps_done ", r.metrics().steps_done(), " is not step ",
                                               r.step()));
    }
    entry.last_heartbeat[r.rank()] = Clock::now();
    response.set_placement_version(std::max<int64_t>(1, job.placement().version()));
    if (r.rank() != 0) return response;
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
    ++entry.version;  // a write already in flight does not carry these figures
  }
  Notify(r.job_id());
  return response;
}

absl::Status JobManager::ReportFailure(const moex::v1::ReportFailureRequest& r, int attempt) {
  std::lock_guard<std::mutex> lock(mutex_);
  const moex::v1::RankFailure& failure = r.failure();
  MOEX_ASSIGN_OR_RETURN(Entry * found, RankCallEntry("ReportFailure", r.job_id(), failure.rank(), attempt));
  Entry& entry = *found;
  const std::string who = StrCat("ReportFailure for job ", r.job_id(), " attempt ", CurrentAttempt(entry.job), " rank ",
                                 failure.rank());
  switch (failure.reason()) {
    case moex::v1::END_REASON_RANK_LOST:
    case moex::v1::END_REASON_BAD_INPUT:
    case moex::v1::END_REASON_OUT_OF_MEMORY:
    case moex::v1::END_REASON_RANK_ERROR:
      break;
    default:
      return absl::InvalidArgumentError(StrCat(who, ": reason ", static_cast<int>(failure.reason()),
                                               " is not one a rank reports (RANK_LOST, BAD_INPUT, OUT_OF_MEMORY, "
                                               "RANK_ERROR)"));
  }
  if (failure.waiting_for_size() > World(entry.job)) {
    return absl::InvalidArgumentError(StrCat(who, ": waits for ", failure.waiting_for_size(), " ranks of ",
                                             World(entry.job)));
  }
  for (int waited : failure.waiting_for()) {
    if (waited < 0 || waited >= World(entry.job) || waited == failure.rank()) {
      return absl::InvalidArgumentError(StrCat(who, ": waiting_for rank ", waited, " is ",
                                               waited == failure.rank() ? "itself" : "outside the attempt's ranks"));
    }
  }
  for (const moex::v1::RankFailure& said : entry.failures) {
    if (said.rank() == failure.rank()) return absl::OkStatus();  // its first word stands
  }
  moex::v1::RankFailure kept = failure;
  if (kept.message().size() > 1024) kept.mutable_message()->resize(1024);
  entry.failures.push_back(std::move(kept));
  return absl::OkStatus();
}

}  // namespace moex::cluster
