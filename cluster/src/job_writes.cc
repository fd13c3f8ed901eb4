// The job records' way to disk: Persist queues a job, a writer thread
// writes the newest state of each queued job off the job manager's lock
// (SQLite's synchronous=FULL fsync never holds the lock or a gRPC thread),
// PersistNow writes at once after a launch. JobManager's methods, kept apart
// from the job lifecycle in job_manager.cc.
#include <cstdio>
#include <string>
#include <vector>

#include "moex/core/log.h"
#include "moex/cluster/job_manager.h"

namespace moex::cluster {

using moex::v1::Job;

void JobManager::Persist(Entry& entry) {
  entry.unsaved = true;
  ++entry.version;
  if (!entry.queued) {
    entry.queued = true;
    dirty_.push_back(entry.job.id());
  }
  write_wanted_.notify_one();
}

void JobManager::PersistNow(Entry& entry) {
  ++entry.version;
  entry.saved_at = Clock::now();
  absl::Status status = store_->Put(entry.job, entry.process_group);
  if (status.ok()) {
    if (!entry.queued) entry.unsaved = false;
    return;
  }
  // As any write: retried from the monitor loop, said once.
  if (!entry.write_failed) {
    log::Error("cannot persist the job (retrying every second)",
               {{"job_id", entry.job.id()}, {"why", std::string(status.message())}});
  }
  entry.write_failed = true;
  entry.unsaved = true;
}

void JobManager::WriterLoop() {
  struct Write {
    std::string id;
    Job job;
    pid_t process_group;
    uint64_t version;
    absl::Status status;
  };
  while (true) {
    std::vector<Write> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      write_wanted_.wait(lock, [this] { return !dirty_.empty() || writer_stop_; });
      if (dirty_.empty()) return;  // stopping, and everything queued is written
      for (const std::string& id : dirty_) {
        auto it = jobs_.find(id);
        if (it == jobs_.end()) continue;
        it->second.queued = false;
        batch.push_back({id, it->second.job, it->second.process_group, it->second.version, absl::OkStatus()});
      }
      dirty_.clear();
    }
    for (Write& write : batch) write.status = store_->Put(write.job, write.process_group);  // off the lock
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const Write& write : batch) {
        auto it = jobs_.find(write.id);
        if (it == jobs_.end()) continue;
        Entry& entry = it->second;
        entry.saved_at = Clock::now();
        if (!write.status.ok()) {
          // The API keeps answering from memory, the record is retried every
          // second (monitor loop), and the operator sees once why the disk
          // copy lags.
          if (!entry.write_failed) {
            log::Error("cannot persist the job (retrying every second)",
                       {{"job_id", write.id}, {"why", std::string(write.status.message())}});
          }
          entry.write_failed = true;
          continue;
        }
        if (entry.write_failed) log::Info("job persisted again", {{"job_id", write.id}});
        entry.write_failed = false;
        if (entry.version == write.version && !entry.queued) entry.unsaved = false;
      }
    }
    written_.notify_all();
  }
}

}  // namespace moex::cluster
