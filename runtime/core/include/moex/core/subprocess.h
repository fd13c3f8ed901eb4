// Starting a program from an argument vector (never through a shell), in a
// process group of its own so that it and every child can be signalled
// together, with its output appended to a log file.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moex {

struct SpawnOptions {
  std::vector<std::string> argv;      // argv[0] is looked up in PATH
  std::string log_path;               // stdout and stderr are appended here
  std::vector<std::string> extra_env; // "KEY=VALUE" added to this process's environment
};

// The new process's pid, which is also its process group id.
absl::StatusOr<pid_t> SpawnInNewGroup(const SpawnOptions& options);

// kill(-group, signal); a group that is gone already is not an error.
absl::Status SignalGroup(pid_t group, int signal);
bool GroupAlive(pid_t group);

// True while `pid` runs (a zombie does not count).
bool ProcessRunning(pid_t pid);

// Sends `signal` to `pid` only if its command line contains `marker` (so a
// recycled pid is never hit). Returns whether it sent it.
bool SignalIfCommandLineHas(pid_t pid, const std::string& marker, int signal);

// Sends `signal` to every process of this user on this host, other than
// this one, whose command line contains `marker`; returns how many. For
// processes whose pids were never reported (a rank that died before it
// registered, in a process group of its own).
int SignalEveryCommandLineWith(const std::string& marker, int signal);

// "exited with code 3", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

}  // namespace moex
