// How the controller starts a job's ranks on its hosts. One interface, one
// backend per engine that reaches hosts (mpirun today; Slurm and others
// behind the same call). Nothing passes through a shell: every argument is
// an argv word.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/launcher/host_cleanup.h"

namespace moex::launcher {

struct LaunchRequest {
  std::string job_id;
  int world_size = 0;
  // What each rank runs: `moex worker --job-id ID --controller ADDR`.
  std::vector<std::string> rank_argv;
  std::vector<std::string> extra_env;  // "KEY=VALUE", for the launcher and every rank
  std::string log_path;                // the job's log: stdout and stderr appended
};

struct Launched {
  pid_t process_group = 0;  // the launcher process and its group (signal it to stop the job)
  std::vector<std::string> argv;  // exactly what ran
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  virtual absl::StatusOr<Launched> Launch(const LaunchRequest& request) const = 0;
  // Runs the job's host cleanup (host_cleanup.h) once on every host its
  // ranks ran on, as `HostCleanupArgv(moex_binary, request)` or in
  // process where the host is this one, and answers one line per host
  // ("<host>: <HostCleanupReport::Summary()>"); an error names the hosts
  // it could not reach. Blocks for up to about request.wait_seconds plus
  // the launch: never call it under a lock or on a request thread.
  virtual absl::StatusOr<std::vector<std::string>> CleanUpHosts(const HostCleanupRequest& request,
                                                                const std::string& moex_binary) const = 0;
};

// `mpirun [args…] -np N <rank argv>` in a process group of its own.
// `mpirun`: the program (looked up in PATH); `args`: Open MPI options.
// Every rank runs on this host (no hostfile), so CleanUpHosts cleans this
// host, in process. A hostfile backend would run
// `mpirun --hostfile F --map-by ppr:1:node HostCleanupArgv(…)` instead.
std::unique_ptr<Launcher> MakeMpirunLauncher(std::string mpirun, std::vector<std::string> args);

}  // namespace moex::launcher
