// Elastic recovery: when a rank of a job that may restart dies, goes
// silent or never starts, the job is relaunched (on the surviving ranks when
// it may shrink) and resumes after the last step reported. JobManager's
// methods, kept apart from the job lifecycle in job_manager.cc.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_join.h"
#include "moex/cluster/job_manager.h"
#include "moex/core/echo.h"
#include "moex/core/log.h"
#include "moex/core/str_cat.h"

namespace moex::cluster {

using moex::v1::Job;

void JobManager::CloseAttempt(Entry& entry, moex::v1::EndReason reason, const std::string& why,
                              const std::vector<int>& lost) {
  Job& job = entry.job;
  if (job.attempts_size() == 0) return;
  moex::v1::Attempt* attempt = job.mutable_attempts(job.attempts_size() - 1);
  if (attempt->end_time_unix_ms() != 0) return;
  attempt->set_end_time_unix_ms(NowMs());
  attempt->set_steps_done(job.metrics().steps_done());
  attempt->set_ended(why);
  attempt->set_reason(reason);
  for (int rank : lost) attempt->add_lost_ranks(rank);
  for (size_t i = 0; i < entry.failures.size() && i < 16; ++i) *attempt->add_rank_failures() = entry.failures[i];
}

void JobManager::RankFailed(Entry& entry, moex::v1::EndReason reason, std::string why, std::vector<int> lost,
                            std::vector<std::string> lost_hosts) {
  if (IsTerminal(entry.job.state())) return;
  Job& job = entry.job;
  const moex::v1::JobSpec& spec = job.spec();
  const int restarts = std::max(0, job.attempts_size() - 1);
  std::sort(lost.begin(), lost.end());
  lost.erase(std::unique(lost.begin(), lost.end()), lost.end());
  // The same config, checkpoint or input fails the same way again.
  const bool retry_cannot_help = reason == moex::v1::END_REASON_BAD_INPUT;
  if (entry.cancel_requested || spec.has_bench() || restarts >= spec.max_restarts() || retry_cannot_help) {
    if (job.attempts_size() > 0) {
      for (const std::string& host : lost_hosts) job.mutable_attempts(job.attempts_size() - 1)->add_lost_hosts(host);
    }
    if (retry_cannot_help && restarts < spec.max_restarts() && !entry.cancel_requested) {
      why = StrCat(why, " (not restarted: a rank refused its input, which a restart would give it again)");
    } else if (spec.max_restarts() > 0 && !entry.cancel_requested) {
      why = StrCat(why, " (attempt ", restarts + 1, " of ", spec.max_restarts() + 1, ": no restart left)");
    }
    CloseAttempt(entry, reason, why, lost);
    Finish(entry, moex::v1::JOB_STATE_FAILED, std::move(why), reason);
    return;
  }
  // Close this attempt, and leave nothing of it running.
  const int64_t now =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  if (job.attempts_size() == 0) {  // a record from before attempts were kept
    moex::v1::Attempt* first = job.add_attempts();
    first->set_number(1);
    first->set_world_size(World(job));
    first->set_start_time_unix_ms(job.submit_time_unix_ms());
  }
  CloseAttempt(entry, reason, why, lost);
  moex::v1::Attempt* ended = job.mutable_attempts(job.attempts_size() - 1);
  for (const std::string& host : lost_hosts) ended->add_lost_hosts(host);
  KillProcesses(entry);
  // What the ended attempt's ranks left (its weight cache stays for the next).
  CleanUpHosts(job, ended->number() > 0 ? ended->number() : job.attempts_size());
  job_by_group_.erase(entry.process_group);  // its exit, reaped later, is no news
  entry.process_group = 0;
  entry.adopted = false;

  const int world = World(job);
  int next_world = world;
  std::string how = StrCat("on the same ", world, " ranks");
  if (spec.allow_shrink() && !lost.empty() && static_cast<int>(lost.size()) < world) {
    const int survivors = world - static_cast<int>(lost.size());
    absl::Status placed = PublishForWorld(entry, survivors, StrCat("elastic: ", survivors, " ranks after rank(s) ",
                                                                   absl::StrJoin(lost, ", "), " failed"));
    if (placed.ok()) {
      // The new ranks start on it: it serves from the attempt's first step.
      job.mutable_rebalances(job.rebalances_size() - 1)->set_live_at_step(job.metrics().steps_done() + 1);
      next_world = survivors;
      how = StrCat("on the ", survivors, " surviving ranks (placement version ", job.placement().version(), ")");
    } else {
      how = StrCat("on ", world, " ranks: it cannot shrink (", placed.message(), ")");
    }
  }
  job.set_world_size(next_world);
  job.clear_ranks();
  job.set_ranks_registered(0);
  entry.last_heartbeat.clear();
  entry.heartbeat_step.clear();
  entry.done_ranks.clear();
  entry.failures.clear();
  job.set_state(moex::v1::JOB_STATE_PENDING);
  ++counters_.restarts;
  const int64_t resume = job.metrics().steps_done();
  moex::v1::Attempt* attempt = job.add_attempts();
  attempt->set_number(job.attempts_size());
  attempt->set_world_size(next_world);
  attempt->set_start_time_unix_ms(now);
  attempt->set_first_step(resume);
  job.set_message(StrCat("restarting ", how, ", resuming after step ", resume, " (attempt ", attempt->number(), " of ",
                         spec.max_restarts() + 1, "); attempt ", attempt->number() - 1, " ended: ", why));
  absl::Status launched = Launch(entry);
  if (!launched.ok()) {
    Finish(entry, moex::v1::JOB_STATE_FAILED, StrCat("could not restart the job: ", launched.message(), "; before: ", why),
           moex::v1::END_REASON_LAUNCHER_ERROR);
    return;
  }
  PersistNow(entry);  // the new launch's group, on disk before anything could lose it
  log::Warn("job restarting", {{"job_id", job.id()},
                               {"attempt", std::to_string(attempt->number())},
                               {"world_size", std::to_string(next_world)},
                               {"resume_after_step", std::to_string(resume)},
                               {"why", Echo(why)}});
  pending_notifications_.push_back(job.id());
}

}  // namespace moex::cluster
