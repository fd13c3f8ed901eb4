#include "moex/cluster/state_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::cluster {
namespace {

// The pid written in the lock file, or "" when it cannot be read (its holder
// may not have written it yet).
std::string LockHolder(int fd) {
  char buffer[32] = {};
  const ssize_t n = pread(fd, buffer, sizeof(buffer) - 1, 0);
  if (n <= 0) return "";
  std::string text(buffer, static_cast<size_t>(n));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.find_first_not_of("0123456789") == std::string::npos ? text : "";
}

}  // namespace

absl::Status MakePrivateDirectory(const std::string& path, std::string_view what) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  std::error_code error;
  const std::filesystem::path parent = std::filesystem::path(trimmed).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, error);
  if (!error && mkdir(trimmed.c_str(), 0700) != 0 && errno != EEXIST) error.assign(errno, std::generic_category());
  if (error) return absl::PermissionDeniedError(StrCat("cannot create ", what, " '", path, "': ", error.message()));
  if (!std::filesystem::is_directory(trimmed, error)) {
    return absl::PermissionDeniedError(StrCat("cannot create ", what, " '", path, "': ",
                                              error ? error.message() : "something else has that name"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StateDirLock>> StateDirLock::Acquire(const std::string& state_dir) {
  MOEX_RETURN_IF_ERROR(MakePrivateDirectory(state_dir, "state dir"));
  const std::string path = (std::filesystem::path(state_dir) / "serve.lock").string();
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return absl::PermissionDeniedError(StrCat("cannot open '", path, "': ", std::strerror(errno)));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int lock_error = errno;
    const std::string holder = LockHolder(fd);
    close(fd);
    if (lock_error == EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          StrCat("state dir '", state_dir, "' is in use by another moex serve (pid ",
                 holder.empty() ? "unknown" : holder, ", which holds ", path,
                 "): stop it, or give this one another --state-dir"));
    }
    return absl::PermissionDeniedError(StrCat("cannot lock '", path, "': ", std::strerror(lock_error)));
  }
  const std::string pid = StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int write_error = errno;
    close(fd);
    return absl::PermissionDeniedError(StrCat("cannot write '", path, "': ", std::strerror(write_error)));
  }
  return std::unique_ptr<StateDirLock>(new StateDirLock(fd, path));
}

StateDirLock::~StateDirLock() { close(fd_); }

absl::StatusOr<StateDirIdentity> StateDirIdentity::Capture(const std::string& state_dir,
                                                           const std::vector<std::string>& entries) {
  StateDirIdentity identity;
  identity.state_dir_ = state_dir;
  std::vector<std::string> paths = {state_dir};
  for (const std::string& entry : entries) paths.push_back((std::filesystem::path(state_dir) / entry).string());
  for (const std::string& path : paths) {
    struct stat info;
    if (stat(path.c_str(), &info) != 0) {
      return absl::FailedPreconditionError(StrCat("state dir '", state_dir, "': cannot stat '", path, "': ",
                                                  std::strerror(errno)));
    }
    identity.entries_.push_back({path, info.st_dev, info.st_ino});
  }
  return identity;
}

absl::Status StateDirIdentity::Check() const {
  for (const Entry& entry : entries_) {
    struct stat info;
    std::string what;
    if (stat(entry.path.c_str(), &info) != 0) {
      what = StrCat("'", entry.path, "' is missing (", std::strerror(errno), ")");
    } else if (info.st_dev != entry.device || info.st_ino != entry.inode) {
      what = StrCat("'", entry.path, "' was replaced (deleted and made again)");
    } else {
      continue;
    }
    return absl::FailedPreconditionError(
        StrCat("state dir '", state_dir_, "' is no longer the one this controller opened: ", what,
               "; jobs cannot be recorded: restore it and restart the controller"));
  }
  return absl::OkStatus();
}

}  // namespace moex::cluster
