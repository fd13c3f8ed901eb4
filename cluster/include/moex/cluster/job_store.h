// Job records in SQLite (WAL) under the controller's state dir, so that a
// restarted controller still knows every job. One row per job: the Job
// message, serialised, plus the process group that runs it, and whether and
// when it ended (for retention; a database from before these columns gets
// them, filled from its records, when opened).
#pragma once

#include <sys/types.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/v1/job.pb.h"

struct sqlite3;

namespace moex::cluster {

struct StoredJob {
  moex::v1::Job job;
  pid_t process_group = 0;  // 0: none started
};

class JobStore {
 public:
  // Creates `state_dir` if needed; the error names the path and the reason
  // (unwritable, disk full, a corrupt database).
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& state_dir);
  ~JobStore();

  // Inserts or replaces, durably (synchronous=FULL): a job the API answered
  // for is on disk.
  absl::Status Put(const moex::v1::Job& job, pid_t process_group);
  absl::StatusOr<std::vector<StoredJob>> LoadAll();
  // In (submit time, id) order, the `limit` jobs after (after_ms, after_id);
  // limit < 0: all of them.
  absl::StatusOr<std::vector<StoredJob>> LoadPage(int64_t after_ms, const std::string& after_id, int limit);
  // One job's record; NOT_FOUND when there is none.
  absl::StatusOr<moex::v1::Job> Get(const std::string& id);
  // The ended jobs (SUCCEEDED, FAILED, CANCELLED) that retention drops,
  // oldest end first: those that ended before `ended_before_ms` (when > 0),
  // and those past the `keep_newest` newest by end (when > 0).
  absl::StatusOr<std::vector<std::string>> Expired(int keep_newest, int64_t ended_before_ms);
  // Removes a job's row; OK when there was none.
  absl::Status Delete(const std::string& id);
  const std::string& path() const { return path_; }
  // Records found unreadable when the store was opened: each was moved,
  // bytes intact, to the `quarantine` table of the same database (id,
  // submit_ms, process_group, record, reason, quarantined_ms), so that one
  // bad row never stops the controller from starting and nothing is thrown
  // away. Each entry: "job J (N bytes): why".
  const std::vector<std::string>& quarantined() const { return quarantined_; }

 private:
  JobStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  // The `ended` and `end_ms` columns, added to a database from before them.
  absl::Status AddEndColumns();
  // Moves every row whose record does not parse (or names another id) to
  // the quarantine table, in one transaction.
  absl::Status QuarantineCorruptRows();
  std::vector<std::string> quarantined_;
  std::mutex mutex_;
  sqlite3* db_;
  std::string path_;
};

}  // namespace moex::cluster
