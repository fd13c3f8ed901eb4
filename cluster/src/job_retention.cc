// Deleting ended jobs: on request (DeleteJob) and by retention (--keep-jobs,
// --keep-days). A job leaves memory under the lock; its row, its log and its
// launch files go off the lock.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>

#include "moex/cluster/job_manager.h"
#include "moex/core/status_macros.h"
#include "moex/core/log.h"
#include "moex/core/str_cat.h"
#include "moex/launcher/launcher.h"

namespace moex::cluster {
namespace {

std::string StateWord(moex::v1::JobState state) {
  std::string name = moex::v1::JobState_Name(state);
  return name.rfind("JOB_STATE_", 0) == 0 ? name.substr(10) : name;
}

// Ids this controller made ("j-" and hex): only those become file names.
bool PlainId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; });
}

}  // namespace

absl::StatusOr<moex::v1::Job> JobManager::Delete(const std::string& id, bool wait_for_record) {
  MOEX_RETURN_IF_ERROR(CheckJobIdLength(id));
  auto not_ended = [&](const moex::v1::Job& job) {
    return absl::FailedPreconditionError(StrCat("job ", id, " is ", StateWord(job.state()),
                                                ": only an ended job can be deleted; cancel it first (moex job cancel ",
                                                id, ")"));
  };
  auto cleaning = [&] {
    return absl::UnavailableError(StrCat("job ", id, ": its hosts are still being cleaned; retry in a few seconds"));
  };
  moex::v1::Job job;
  bool held = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) {
      if (!IsTerminal(it->second.job.state())) return not_ended(it->second.job);
      // Its final record is written off the lock, within milliseconds.
      if (wait_for_record) {
        written_.wait_for(lock, std::chrono::seconds(5), [&] {
          auto now = jobs_.find(id);
          return now == jobs_.end() || !now->second.unsaved;
        });
      }
      it = jobs_.find(id);  // evicted meanwhile: its record is on disk, deleted below
    }
    if (it != jobs_.end()) {
      Entry& entry = it->second;
      if (entry.unsaved) {
        return absl::UnavailableError(StrCat("job ", id, ": its final record is not on disk yet (", store_->path(),
                                             "); retry in a second"));
      }
      if (cleaner_->Busy(id)) return cleaning();
      job = entry.job;
      held = true;
      for (auto group = job_by_group_.begin(); group != job_by_group_.end();) {
        group = group->second == id ? job_by_group_.erase(group) : std::next(group);
      }
      jobs_.erase(it);
    }
  }
  if (!held) {
    MOEX_ASSIGN_OR_RETURN(job, store_->Get(id));
    if (!IsTerminal(job.state())) return not_ended(job);
    if (cleaner_->Busy(id)) return cleaning();
  }
  absl::Status deleted = store_->Delete(id);
  if (!deleted.ok()) return absl::Status(deleted.code(), StrCat("cannot delete job ", id, ": ", deleted.message()));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (int64_t& count = ended_by_state_[job.state()]; count > 0) --count;
  }
  RemoveJobFiles(job);
  return job;
}

void JobManager::RemoveJobFiles(const moex::v1::Job& job) const {
  if (!PlainId(job.id())) return;
  std::error_code error;
  const std::filesystem::path log_file = std::filesystem::path(options_.state_dir) / "logs" / (job.id() + ".log");
  std::filesystem::remove(log_file, error);
  if (error) log::Warn(StrCat("cannot remove ", log_file.string(), ": ", error.message()), {{"job_id", job.id()}});
  // The hostfile of each attempt mpirun was given (launcher/launcher.h).
  for (int attempt = 1; attempt <= std::max(1, job.attempts_size()); ++attempt) {
    std::filesystem::remove(std::filesystem::path(options_.launcher.work_dir) /
                                StrCat(launcher::AttemptName(job.id(), attempt), ".hostfile"),
                            error);
  }
}

int JobManager::ApplyRetention(int at_most, bool* more) {
  if (more != nullptr) *more = false;
  if (options_.keep_jobs <= 0 && options_.keep_days <= 0) return 0;
  const int64_t ended_before =
      options_.keep_days > 0 ? NowMs() - static_cast<int64_t>(options_.keep_days * 86400.0 * 1000.0) : 0;
  absl::StatusOr<std::vector<std::string>> expired = store_->Expired(options_.keep_jobs, ended_before);
  if (!expired.ok()) {
    log::Error(StrCat("retention: ", expired.status().message()));
    return 0;
  }
  int deleted = 0;
  for (const std::string& id : *expired) {
    if (deleted >= at_most) {
      if (more != nullptr) *more = true;
      break;
    }
    // One still being cleaned or written is deleted at a later round.
    if (Delete(id, /*wait_for_record=*/false).ok()) ++deleted;
  }
  if (deleted > 0) {
    log::Info("retention deleted ended jobs with their logs", {{"deleted", std::to_string(deleted)},
                                                               {"keep_jobs", std::to_string(options_.keep_jobs)},
                                                               {"keep_days", StrCat(options_.keep_days)}});
  }
  return deleted;
}

}  // namespace moex::cluster
