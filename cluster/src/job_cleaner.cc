#include "moex/cluster/job_cleaner.h"

#include <cstdio>
#include <fstream>

#include "moex/core/log.h"
#include "moex/core/str_cat.h"

namespace moex::cluster {

JobCleaner::JobCleaner(const launcher::Launcher& launcher, std::string moex_binary)
    : launcher_(launcher), moex_binary_(std::move(moex_binary)), thread_([this] { Loop(); }) {}

JobCleaner::~JobCleaner() { Drain(); }

void JobCleaner::Enqueue(launcher::HostCleanupRequest request, std::string log_path, std::vector<std::string> hosts,
                         std::vector<std::string> exclude) {
  Task task{std::move(request), std::move(log_path), std::move(hosts), std::move(exclude)};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!draining_) {
      queue_.push_back(std::move(task));
      wake_.notify_one();
      return;
    }
  }
  Run(task);
}

void JobCleaner::Drain() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void JobCleaner::Loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return draining_ || !queue_.empty(); });
    if (queue_.empty()) return;  // draining, and nothing left
    Task task = std::move(queue_.front());
    queue_.pop_front();
    running_ = task.request.job_id;
    lock.unlock();
    Run(task);
    lock.lock();
    running_.clear();
  }
}

bool JobCleaner::Busy(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (running_ == job_id) return true;
  for (const Task& task : queue_) {
    if (task.request.job_id == job_id) return true;
  }
  return false;
}

void JobCleaner::Run(const Task& task) const {
  const launcher::HostCleanupRequest& request = task.request;
  const std::string what = request.attempt > 0
                               ? StrCat("attempt ", request.attempt, " of job ", request.job_id)
                               : StrCat("job ", request.job_id);
  absl::StatusOr<std::vector<std::string>> hosts = launcher_.CleanUpHosts(request, moex_binary_, task.hosts, task.exclude);
  std::vector<std::string> lines;
  if (!hosts.ok()) {
    lines.push_back(StrCat("moex serve: cleanup of ", what, " failed: ", hosts.status().message()));
  } else {
    for (const std::string& host : *hosts) lines.push_back(StrCat("moex serve: cleanup of ", what, " on ", host));
  }
  std::ofstream job_log(task.log_path, std::ios::app);
  for (const std::string& line : lines) {
    job_log << line << "\n";
    // The operator hears of what was refused or failed, not of routine.
    if (!hosts.ok() || line.find("; refused: ") != std::string::npos || line.find("; failed: ") != std::string::npos ||
        line.find(" still running") != std::string::npos) {
      log::Warn(line.substr(line.rfind("moex serve: ", 0) == 0 ? 12 : 0), {{"job_id", task.request.job_id}});
    }
  }
}

}  // namespace moex::cluster
