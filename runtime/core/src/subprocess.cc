#include "moex/core/subprocess.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "moex/core/str_cat.h"

extern char** environ;

namespace moex {

absl::StatusOr<pid_t> SpawnInNewGroup(const SpawnOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("spawn: empty argument vector");
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attributes;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attributes);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (!options.log_path.empty()) {
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, options.log_path.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  }
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
  for (const std::string& arg : options.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) env_storage.emplace_back(*e);
  for (const std::string& extra : options.extra_env) env_storage.push_back(extra);
  std::vector<char*> env;
  for (std::string& e : env_storage) env.push_back(e.data());
  env.push_back(nullptr);

  pid_t pid = 0;
  int error = posix_spawnp(&pid, argv[0], &actions, &attributes, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
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

bool ProcessRunning(pid_t pid) {
  if (pid <= 0) return false;
  std::ifstream stat(StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

bool SignalIfCommandLineHas(pid_t pid, const std::string& marker, int signal) {
  if (pid <= 0) return false;
  std::ifstream in(StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : cmdline) {
    if (c == '\0') c = ' ';
  }
  if (cmdline.find(marker) == std::string::npos) return false;
  return kill(pid, signal) == 0;
}

int SignalEveryCommandLineWith(const std::string& marker, int signal) {
  if (marker.empty()) return 0;
  int signalled = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
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
