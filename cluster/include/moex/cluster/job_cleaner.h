// Cleans what an ended job (or an ended attempt of a relaunched one) left on
// its hosts: /dev/shm segments, its weight cache, its record directory
// (launcher/host_cleanup.h), through the launcher, which reaches every host.
// One request at a time on a thread of its own, so that neither the job
// manager's lock nor a gRPC thread waits for a host.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "moex/launcher/host_cleanup.h"
#include "moex/launcher/launcher.h"

namespace moex::cluster {

class JobCleaner {
 public:
  // `launcher` must outlive this.
  JobCleaner(const launcher::Launcher& launcher, std::string moex_binary);
  ~JobCleaner();  // Drain()
  JobCleaner(const JobCleaner&) = delete;
  JobCleaner& operator=(const JobCleaner&) = delete;

  // Queues a cleanup; its outcome, per host, is appended to `log_path` (the
  // job's log) and anything refused or failed also goes to stderr. After
  // Drain() it runs at once, in the caller.
  // `hosts`: where the job ran (empty: every host the launcher has);
  // `exclude`: hosts lost, not reachable.
  void Enqueue(launcher::HostCleanupRequest request, std::string log_path, std::vector<std::string> hosts = {},
               std::vector<std::string> exclude = {});
  // Runs everything queued, then ends the thread.
  void Drain();
  // Whether a cleanup of job `job_id` is queued or running (its log is still
  // written to).
  bool Busy(const std::string& job_id);

 private:
  struct Task {
    launcher::HostCleanupRequest request;
    std::string log_path;
    std::vector<std::string> hosts, exclude;
  };
  void Run(const Task& task) const;
  void Loop();

  const launcher::Launcher& launcher_;
  std::string moex_binary_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> queue_;
  std::string running_;  // the job whose cleanup runs now, "" when none
  bool draining_ = false;
  std::thread thread_;
};

}  // namespace moex::cluster
