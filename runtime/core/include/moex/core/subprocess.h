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

// Whether `pid` runs with `marker` in its command line (arguments joined by
// spaces).
bool CommandLineHas(pid_t pid, const std::string& marker);

// Sends `signal` to `pid` only if its command line contains `marker` (so a
// recycled pid is never hit). Returns whether it sent it.
bool SignalIfCommandLineHas(pid_t pid, const std::string& marker, int signal);

// Sends `signal` to every process of this user on this host, other than
// this one, whose command line contains `marker`; returns how many. For
// processes whose pids were never reported (a rank that died before it
// registered, in a process group of its own).
int SignalEveryCommandLineWith(const std::string& marker, int signal);

// A short command run to its end, for its output: a launcher's query
// (`squeue`, `sinfo`) or a step it runs on every host. Its own process
// group; killed (the whole group) at the deadline. Never through a shell.
struct CommandResult {
  int wait_status = 0;
  bool timed_out = false;
  std::string out;  // stdout, at most max_output bytes kept
  std::string err;  // stderr, likewise
  bool ok() const;  // exited 0 in time
  // "exited with code 1: <first line of stderr>", "timed out after 5 s".
  std::string Describe() const;
};
struct CommandOptions {
  std::vector<std::string> argv;       // argv[0] is looked up in PATH
  std::vector<std::string> extra_env;  // "KEY=VALUE"
  double timeout_seconds = 10;
  size_t max_output = 1 << 20;
};
// Fails only when the program cannot be started; how it ended is the result.
// The caller must not reap other children with waitpid(-1) meanwhile.
absl::StatusOr<CommandResult> RunCommand(const CommandOptions& options);

// Where `program` runs from: itself when it holds a '/', else the first
// executable of that name on PATH; an error says it is not there.
absl::StatusOr<std::string> FindProgram(const std::string& program);

// "exited with code 3", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

}  // namespace moex
