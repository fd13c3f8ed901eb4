#include "moex/launcher/host_cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "absl/strings/str_join.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"

namespace moex::launcher {
namespace {

constexpr std::string_view kMpiSegmentPrefix = "vader_segment.";
constexpr size_t kMaxRecordBytes = 1 << 20;

std::string Errno(int error) { return std::strerror(error); }

// The whole of a small regular file, read without following a link.
std::optional<std::string> ReadRecord(const std::string& path, std::string* why) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    *why = Errno(errno);
    return std::nullopt;
  }
  struct stat info {};
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) || info.st_uid != geteuid() ||
      static_cast<size_t>(info.st_size) > kMaxRecordBytes) {
    *why = "not a regular file of this user under 1 MiB";
    close(fd);
    return std::nullopt;
  }
  std::string text(static_cast<size_t>(info.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = read(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  close(fd);
  text.resize(done);
  return text;
}

// A segment's name, as the ranks of a job make them: Open MPI's
// `vader_segment.<host>.<jobfam>.<jobid>.<local rank>` (the host may hold
// dots) or moex's `moex-<16 hex>-<rank>-<generation>`.
bool IsMpiSegmentName(const std::string& name) {
  static const std::regex kMpi(R"(vader_segment\.[A-Za-z0-9._-]+\.[0-9a-fA-F]+\.[0-9a-fA-F]+\.[0-9]+)");
  return name.size() < 256 && std::regex_match(name, kMpi);
}
bool IsMoexSegmentName(const std::string& name) {
  static const std::regex kMoex(R"(moex-[0-9a-f]{16}-[0-9]+-[0-9]+)");
  return std::regex_match(name, kMoex);
}

// "" when `path` names a segment directly in `shm_dir`, else why not.
std::string WhyNotASegment(const std::string& path, const std::string& shm_dir) {
  const std::filesystem::path p(path);
  if (!p.is_absolute()) return "not an absolute path";
  if (p.parent_path() != std::filesystem::path(shm_dir)) return StrCat("not directly in ", shm_dir);
  const std::string name = p.filename().string();
  if (!IsMpiSegmentName(name) && !IsMoexSegmentName(name)) return "not named like a shared-memory segment";
  return "";
}

struct Removal {
  int removed = 0;
  std::vector<std::string> refused, errors;
};

// Unlinks `path` when it is a regular file (not a link) of this user.
void RemoveSegment(const std::string& path, Removal* out) {
  struct stat info {};
  if (lstat(path.c_str(), &info) != 0) {
    if (errno != ENOENT) out->errors.push_back(StrCat(path, ": ", Errno(errno)));
    return;  // gone already: the rank unlinked it, or an earlier cleanup did
  }
  if (!S_ISREG(info.st_mode)) {
    out->refused.push_back(StrCat(path, ": not a regular file"));
    return;
  }
  if (info.st_uid != geteuid()) {
    out->refused.push_back(StrCat(path, ": owned by uid ", info.st_uid, ", not ", geteuid()));
    return;
  }
  if (unlink(path.c_str()) != 0) {
    if (errno != ENOENT) out->errors.push_back(StrCat(path, ": ", Errno(errno)));
    return;
  }
  ++out->removed;
}

// Checks that `dir` is a real directory of this user (lstat: a link is
// refused). nullopt: it does not exist.
std::optional<std::string> WhyNotOurDirectory(const std::string& dir) {
  struct stat info {};
  if (lstat(dir.c_str(), &info) != 0) {
    if (errno == ENOENT) return std::nullopt;
    return Errno(errno);
  }
  if (S_ISLNK(info.st_mode)) return std::string("a symbolic link");
  if (!S_ISDIR(info.st_mode)) return std::string("not a directory");
  if (info.st_uid != geteuid()) return StrCat("owned by uid ", info.st_uid, ", not ", geteuid());
  return std::string();
}

// Names in `dir` (no recursion, no links followed).
std::vector<std::string> ListNames(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// SIGKILL to the job's (or attempt's) processes left on this host, then a
// bounded wait for them to be gone. Returns how many still run.
int EndProcessesOnHost(const HostCleanupRequest& request) {
  const std::string marker = request.attempt > 0
                                 ? StrCat("worker --job-id ", request.job_id, " --attempt ", request.attempt, " ")
                                 : StrCat("worker --job-id ", request.job_id, " ");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(request.wait_seconds);
  (void)SignalEveryCommandLineWith(marker, SIGKILL);
  int left = SignalEveryCommandLineWith(marker, 0);
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    left = SignalEveryCommandLineWith(marker, 0);
  }
  return left;
}

bool ParseRecordName(const std::string& name, int* attempt) {
  static const std::regex kRecord(R"(attempt-([0-9]{1,6})\.rank-[0-9]{1,7})");
  std::smatch match;
  if (!std::regex_match(name, match, kRecord)) return false;
  *attempt = std::stoi(match[1].str());
  return true;
}

}  // namespace

absl::Status ValidateJobId(std::string_view job_id) {
  static const std::regex kId(R"([A-Za-z0-9][A-Za-z0-9._-]{0,63})");
  const std::string id(job_id);
  if (!std::regex_match(id, kId) || id.find("..") != std::string::npos) {
    return absl::InvalidArgumentError(
        StrCat("job id '", id.substr(0, 80), "' is not 1-64 of [A-Za-z0-9._-] starting with a letter or digit, "
                                            "without '..'"));
  }
  return absl::OkStatus();
}

std::string JobHostDir(const std::string& shm_dir, const std::string& job_id) {
  return (std::filesystem::path(shm_dir) / StrCat("moex-job-", geteuid(), "-", job_id)).string();
}

std::string JobWeightCacheDir(const std::string& root, const std::string& job_id) {
  if (root.empty()) return "";
  return (std::filesystem::path(root) / StrCat("moex-weights-", geteuid(), "-", job_id)).string();
}

std::vector<std::string> MappedMpiSegments(const std::string& shm_dir) {
  std::vector<std::string> found;
  // /proc/self/maps is not a regular file of known size: read it plainly.
  const int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return found;
  std::string text;
  char buffer[8192];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const std::string prefix = StrCat(shm_dir, "/", kMpiSegmentPrefix);
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    const size_t at = line.find(prefix);
    if (at == std::string::npos) continue;
    std::string path = line.substr(at);
    if (path.size() > 10 && path.ends_with(" (deleted)")) continue;  // unlinked already: nothing to leave
    if (std::find(found.begin(), found.end(), path) == found.end()) found.push_back(path);
  }
  return found;
}

absl::StatusOr<RankRecord> RankRecord::Open(const std::string& shm_dir, const std::string& job_id, int attempt,
                                            int rank) {
  if (absl::Status id = ValidateJobId(job_id); !id.ok()) return id;
  const std::string dir = JobHostDir(shm_dir, job_id);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(StrCat("cannot make ", dir, ": ", Errno(errno)));
  }
  std::optional<std::string> why = WhyNotOurDirectory(dir);
  if (!why || !why->empty()) {
    return absl::PermissionDeniedError(StrCat(dir, ": ", why ? *why : "vanished", "; nothing recorded there"));
  }
  const std::string path = StrCat(dir, "/attempt-", attempt, ".rank-", rank);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return absl::PermissionDeniedError(StrCat("cannot open ", path, ": ", Errno(errno)));
  return RankRecord(fd, path);
}

RankRecord::~RankRecord() {
  if (fd_ >= 0) close(fd_);
}

absl::Status RankRecord::Add(const std::string& path) const {
  const std::string line = path + "\n";
  const ssize_t n = write(fd_, line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size())) {
    return absl::InternalError(StrCat("cannot append to ", path_, ": ", n < 0 ? Errno(errno) : "short write"));
  }
  return absl::OkStatus();
}

absl::Status HostCleanupRequest::Validate() const {
  if (absl::Status id = ValidateJobId(job_id); !id.ok()) return id;
  if (attempt < 0) return absl::InvalidArgumentError(StrCat("attempt ", attempt, " is negative"));
  if (!std::filesystem::path(shm_dir).is_absolute() || shm_dir.find("/../") != std::string::npos ||
      shm_dir.ends_with("/..")) {
    return absl::InvalidArgumentError(StrCat("shared-memory directory '", shm_dir, "' is not an absolute path"));
  }
  if (!weight_cache_root.empty() && !std::filesystem::path(weight_cache_root).is_absolute()) {
    return absl::InvalidArgumentError(StrCat("weight cache root '", weight_cache_root, "' is not an absolute path"));
  }
  if (!(wait_seconds >= 0 && wait_seconds <= 600)) {
    return absl::InvalidArgumentError(StrCat("wait of ", wait_seconds, " s is not within 0-600 s"));
  }
  return absl::OkStatus();
}

std::string HostCleanupReport::Summary() const {
  std::vector<std::string> parts;
  parts.push_back(StrCat(segments_removed, " shared-memory segment", segments_removed == 1 ? "" : "s"));
  if (weight_cache_removed) parts.push_back("the weight cache");
  if (job_dir_removed) parts.push_back("the job directory");
  std::string text = StrCat("removed ", absl::StrJoin(parts, ", "));
  if (processes_left > 0) text += StrCat("; ", processes_left, " process(es) of the job still running");
  if (!refused.empty()) text += StrCat("; refused: ", absl::StrJoin(refused, "; "));
  if (!errors.empty()) text += StrCat("; failed: ", absl::StrJoin(errors, "; "));
  return text;
}

absl::StatusOr<HostCleanupReport> CleanJobOnHost(const HostCleanupRequest& request) {
  if (absl::Status valid = request.Validate(); !valid.ok()) return valid;
  HostCleanupReport report;
  report.processes_left = EndProcessesOnHost(request);

  Removal removal;
  const std::string dir = JobHostDir(request.shm_dir, request.job_id);
  std::optional<std::string> dir_problem = WhyNotOurDirectory(dir);
  if (dir_problem && !dir_problem->empty()) {
    removal.refused.push_back(StrCat(dir, ": ", *dir_problem));
  } else if (dir_problem) {
    std::set<std::string> segments, mpi_prefixes;
    std::vector<std::string> records;
    for (const std::string& name : ListNames(dir)) {
      int attempt = 0;
      if (!ParseRecordName(name, &attempt)) continue;
      if (request.attempt > 0 && attempt != request.attempt) continue;
      const std::string record = StrCat(dir, "/", name);
      std::string why;
      std::optional<std::string> text = ReadRecord(record, &why);
      if (!text) {
        removal.refused.push_back(StrCat(record, ": ", why));
        continue;
      }
      records.push_back(record);
      size_t start = 0;
      while (start < text->size()) {
        size_t end = text->find('\n', start);
        if (end == std::string::npos) end = text->size();  // a cut line is still a path, or refused
        const std::string path = text->substr(start, end - start);
        start = end + 1;
        if (path.empty()) continue;
        if (std::string why_not = WhyNotASegment(path, request.shm_dir); !why_not.empty()) {
          removal.refused.push_back(StrCat(path, " (recorded in ", record, "): ", why_not));
          continue;
        }
        segments.insert(path);
        const std::string name_of = std::filesystem::path(path).filename().string();
        if (IsMpiSegmentName(name_of)) mpi_prefixes.insert(name_of.substr(0, name_of.rfind('.') + 1));
      }
    }
    // The other local ranks of the same Open MPI job (a rank killed before
    // it recorded): the recorded name with another local rank number.
    if (!mpi_prefixes.empty()) {
      for (const std::string& name : ListNames(request.shm_dir)) {
        for (const std::string& prefix : mpi_prefixes) {
          if (name.size() > prefix.size() && name.starts_with(prefix) &&
              name.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
            segments.insert(StrCat(request.shm_dir, "/", name));
          }
        }
      }
    }
    for (const std::string& path : segments) RemoveSegment(path, &removal);
    for (const std::string& record : records) {
      if (unlink(record.c_str()) != 0 && errno != ENOENT) removal.errors.push_back(StrCat(record, ": ", Errno(errno)));
    }
    if (request.attempt == 0) {
      // Only this job's records are in it; a link inside is removed, never followed.
      std::error_code error;
      std::filesystem::remove_all(dir, error);
      if (error) {
        removal.errors.push_back(StrCat(dir, ": ", error.message()));
      } else {
        report.job_dir_removed = true;
      }
    }
  }
  if (request.attempt == 0 && !request.weight_cache_root.empty()) {
    const std::string cache = JobWeightCacheDir(request.weight_cache_root, request.job_id);
    std::optional<std::string> cache_problem = WhyNotOurDirectory(cache);
    if (cache_problem && !cache_problem->empty()) {
      removal.refused.push_back(StrCat(cache, ": ", *cache_problem));
    } else if (cache_problem) {
      std::error_code error;
      std::filesystem::remove_all(cache, error);
      if (error) {
        removal.errors.push_back(StrCat(cache, ": ", error.message()));
      } else {
        report.weight_cache_removed = true;
      }
    }
  }
  report.segments_removed = removal.removed;
  report.refused = std::move(removal.refused);
  report.errors = std::move(removal.errors);
  return report;
}

std::vector<std::string> HostCleanupArgv(const std::string& moex_binary, const HostCleanupRequest& request) {
  std::vector<std::string> argv = {moex_binary, "worker", "--cleanup", "--job-id", request.job_id};
  if (request.attempt > 0) argv.insert(argv.end(), {"--attempt", std::to_string(request.attempt)});
  if (!request.weight_cache_root.empty()) argv.insert(argv.end(), {"--weight-cache-root", request.weight_cache_root});
  if (request.shm_dir != "/dev/shm") argv.insert(argv.end(), {"--shm-dir", request.shm_dir});
  return argv;
}

}  // namespace moex::launcher
