// What a job's ranks leave on a host, and its removal there.
//
// A SIGKILLed rank leaves files in /dev/shm: Open MPI's shared-memory
// segments (`vader_segment.<host>.<…>.<local rank>`, 4 MiB a rank), a
// moex segment it made but had not unlinked yet (`moex-<hex>-<rank>-<n>`),
// and a job that may restart keeps its host weight cache there
// (`moex-weights-<uid>-<job>`). Nothing on another host can be seen from
// the controller, so each rank records on its own host what it maps, and
// a cleanup run on each host removes exactly what was recorded there:
//
//   <shm>/moex-job-<uid>-<job>/          0700, owned by the job's user
//     attempt-<A>.rank-<R>               one path a line, appended by rank R
//                                        of attempt A (its launch)
//
// The cleanup never globs over other jobs' names: it removes recorded
// paths only (and, for Open MPI, the other local ranks' segments of the
// same Open MPI job, whose names share the recorded one's prefix: Open MPI
// itself needs that prefix to be unique on the host while the job runs),
// each of which must be a regular file directly in <shm>, named like a
// segment and owned by this user; anything else is refused and reported.
// Symbolic links are never followed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex::launcher {

// A job id that may name files: [A-Za-z0-9][A-Za-z0-9._-]{0,63}, no "..".
// Controller ids (`j-<12 hex>`) pass; anything with a '/' does not.
absl::Status ValidateJobId(std::string_view job_id);

// <shm_dir>/moex-job-<uid>-<job>: where the job's ranks record, per host.
std::string JobHostDir(const std::string& shm_dir, const std::string& job_id);
// <root>/moex-weights-<uid>-<job>: the job's host weight cache; "" when
// `root` is "" (no cache).
std::string JobWeightCacheDir(const std::string& root, const std::string& job_id);

// The files under `shm_dir` this process maps now (from /proc/self/maps)
// that Open MPI made: `vader_segment.*`. Called by a rank right after MPI
// is initialised (its own segment is mapped by then).
std::vector<std::string> MappedMpiSegments(const std::string& shm_dir = "/dev/shm");

// A rank's record on its host. Appends are single write(2)s to a file
// opened O_APPEND, so a rank killed mid-way leaves whole lines.
class RankRecord {
 public:
  // Makes the job's directory (0700) if needed and opens this rank's file.
  // Refuses a directory that is a symbolic link, not a directory, or not
  // this user's.
  static absl::StatusOr<RankRecord> Open(const std::string& shm_dir, const std::string& job_id, int attempt, int rank);
  RankRecord(RankRecord&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }
  RankRecord& operator=(RankRecord&&) = delete;
  ~RankRecord();

  absl::Status Add(const std::string& path) const;
  const std::string& path() const { return path_; }

 private:
  RankRecord(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

struct HostCleanupRequest {
  std::string job_id;
  // > 0: only what attempt `attempt` left (the job relaunches; its weight
  // cache and the other attempts' records stay). 0: the job ended: every
  // attempt's segments, the weight cache and the job's directory.
  int attempt = 0;
  std::string weight_cache_root;  // as the controller's --weight-cache-root; "": none
  std::string shm_dir = "/dev/shm";
  // The job's (or attempt's) processes still on this host, found by their
  // command line, are sent SIGKILL first and waited for this long, so that
  // none makes a file after the cleanup.
  double wait_seconds = 3;

  // The job id, an absolute shm_dir, an absolute or empty root, attempt >= 0.
  absl::Status Validate() const;
};

struct HostCleanupReport {
  int segments_removed = 0;
  bool weight_cache_removed = false;
  bool job_dir_removed = false;
  int processes_left = 0;             // still running after wait_seconds
  std::vector<std::string> refused;   // "<path>: why", left in place
  std::vector<std::string> errors;    // what could not be removed, and why

  bool ok() const { return refused.empty() && errors.empty() && processes_left == 0; }
  // "removed 3 shared-memory segments, the weight cache, the job directory"
  // and, when not ok(), what was refused or failed.
  std::string Summary() const;
};

// Runs on the host whose files it removes. Idempotent: nothing there is no
// error. An error status only for an invalid request.
absl::StatusOr<HostCleanupReport> CleanJobOnHost(const HostCleanupRequest& request);

// `<moex_binary> worker --cleanup --job-id ID [--attempt A]
// [--weight-cache-root R] [--shm-dir D]`: the same cleanup as a command, for
// a launcher that runs it on each host. `--cleanup` comes before
// `--job-id`, so that the command line never reads `worker --job-id ID `
// (the marker of the job's ranks).
std::vector<std::string> HostCleanupArgv(const std::string& moex_binary, const HostCleanupRequest& request);

}  // namespace moex::launcher
