#include "moex/core/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <filesystem>
#include <optional>

#include "moex/core/str_cat.h"
#include "spawn_internal.h"

extern char** environ;

namespace moex {

namespace internal {

int SpawnGroupLeader(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
                     const posix_spawn_file_actions_t* actions, pid_t* pid) {
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setpgroup(&attributes, 0);
  // A fresh signal mask and default dispositions: the controller's blocked
  // signals must not leak into the job.
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &all);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv;
  for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  // extra_env overrides: getenv() takes the first of a name, so a value
  // already in this environment must not stay ahead of it.
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('=') + 1);
    bool overridden = false;
    for (const std::string& extra : extra_env) overridden = overridden || extra.rfind(name, 0) == 0;
    if (!overridden) env_storage.emplace_back(*e);
  }
  for (const std::string& extra : extra_env) env_storage.push_back(extra);
  std::vector<char*> env;
  for (std::string& e : env_storage) env.push_back(e.data());
  env.push_back(nullptr);
  const int error = posix_spawnp(pid, argv[0], actions, &attributes, argv.data(), env.data());
  posix_spawnattr_destroy(&attributes);
  return error;
}

}  // namespace internal

absl::StatusOr<pid_t> SpawnInNewGroup(const SpawnOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("spawn: empty argument vector");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // The log is opened here, not by the spawn: a spawn that fails to open it
  // reports the program ("cannot start 'mpirun': No such file or directory").
  int log_fd = -1;
  if (!options.log_path.empty()) {
    log_fd = open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      const int open_error = errno;
      posix_spawn_file_actions_destroy(&actions);
      return absl::FailedPreconditionError(
          StrCat("cannot open the log '", options.log_path, "': ", std::strerror(open_error)));
    }
    posix_spawn_file_actions_adddup2(&actions, log_fd, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, log_fd, STDERR_FILENO);
  }
  pid_t pid = 0;
  const int error = internal::SpawnGroupLeader(options.argv, options.extra_env, &actions, &pid);
  posix_spawn_file_actions_destroy(&actions);
  if (log_fd >= 0) close(log_fd);
  if (error != 0) {
    return absl::FailedPreconditionError(StrCat("cannot start '", options.argv[0], "': ", std::strerror(error)));
  }
  return pid;
}

absl::Status SignalGroup(pid_t group, int signal) {
  if (group <= 0) return absl::InvalidArgumentError(StrCat("bad process group ", group));
  if (kill(-group, signal) != 0 && errno != ESRCH) {
    return absl::InternalError(StrCat("kill(-", group, ", ", signal, "): ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

bool GroupAlive(pid_t group) { return group > 0 && kill(-group, 0) == 0; }

namespace {

// A /proc file's whole text, read with read(2): the process may end while it
// is read (ESRCH), and a stream would throw from its buffer then (found by
// the soak: the controller died of it).
std::optional<std::string> ReadProcFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string text;
  char buffer[4096];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  return text;
}

}  // namespace

bool ProcessRunning(pid_t pid) {
  if (pid <= 0) return false;
  const std::optional<std::string> line = ReadProcFile(StrCat("/proc/", pid, "/stat"));
  if (!line) return false;
  size_t close_paren = line->rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < line->size() && (*line)[close_paren + 2] != 'Z';
}

bool CommandLineHas(pid_t pid, const std::string& marker) {
  if (pid <= 0) return false;
  std::optional<std::string> cmdline = ReadProcFile(StrCat("/proc/", pid, "/cmdline"));
  if (!cmdline) return false;
  for (char& c : *cmdline) {
    if (c == '\0') c = ' ';
  }
  return cmdline->find(marker) != std::string::npos;
}

bool SignalIfCommandLineHas(pid_t pid, const std::string& marker, int signal) {
  return CommandLineHas(pid, marker) && kill(pid, signal) == 0;
}

int SignalEveryCommandLineWith(const std::string& marker, int signal) {
  if (marker.empty()) return 0;
  int signalled = 0;
  std::error_code error;
  // Advanced with increment(error): entries come and go while it is read.
  for (std::filesystem::directory_iterator it("/proc", error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name.size() > 9 || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == getpid()) continue;
    // kill() itself refuses other users' processes.
    if (SignalIfCommandLineHas(pid, marker, signal)) ++signalled;
  }
  return signalled;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  }
  return StrCat("ended with wait status ", status);
}

}  // namespace moex
