// The controller's state dir: one controller at a time (a lock), and still
// the directory it opened (an identity check).
//
// Two controllers on one state dir would share its jobs: the second adopts
// the first's running jobs and, at its heartbeat timeout, kills them. A state
// dir deleted under a running controller takes every record written after it
// with it. Both are caught here, by what a stat or an flock says, and named.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex::cluster {

// Makes directory `path` (and its missing parents), itself mode 0700: what
// the controller keeps there (job records, logs, the rank key) is its
// user's alone. A directory that exists keeps its mode: its owner chose it.
// PERMISSION_DENIED naming `what` and `path` when it cannot be made.
absl::Status MakePrivateDirectory(const std::string& path, std::string_view what);

// An flock on <state dir>/serve.lock, held while this object lives; the file
// holds the holder's pid. The descriptor is close-on-exec, so the jobs a
// controller launches never hold its lock after it.
class StateDirLock {
 public:
  // Creates the state dir if needed (MakePrivateDirectory; serve.lock is
  // 0600). FAILED_PRECONDITION naming the state dir
  // and the pid that holds it when another process does; PERMISSION_DENIED
  // naming the path when it cannot be created or opened.
  static absl::StatusOr<std::unique_ptr<StateDirLock>> Acquire(const std::string& state_dir);
  ~StateDirLock();
  StateDirLock(const StateDirLock&) = delete;
  StateDirLock& operator=(const StateDirLock&) = delete;

  const std::string& path() const { return path_; }

 private:
  StateDirLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

// The device and inode of the state dir and of the files in it that the
// controller keeps open or writes into, taken once; Check() says whether each
// is still there and the same. A stat each: cheap enough for every submit and
// once a second.
class StateDirIdentity {
 public:
  // `entries`: paths relative to `state_dir` ("jobs.db", "logs").
  static absl::StatusOr<StateDirIdentity> Capture(const std::string& state_dir, const std::vector<std::string>& entries);
  // OK, or FAILED_PRECONDITION naming the state dir and the first path that
  // is missing or was replaced (deleted and made again).
  absl::Status Check() const;
  const std::string& state_dir() const { return state_dir_; }

 private:
  struct Entry {
    std::string path;  // as given to stat
    dev_t device;
    ino_t inode;
  };
  std::string state_dir_;
  std::vector<Entry> entries_;  // the state dir first
};

}  // namespace moex::cluster
