// How the controller starts a job's ranks on its hosts. One interface, one
// backend per engine that reaches hosts: `mpirun` (on this host, or over a
// hostfile) and Slurm. moex uses these engines; it does not schedule hosts
// itself. Nothing passes through a shell: every argument is an argv word.
//
// The controller never signals a process on another host by its pid: a
// job is stopped through its engine (mpirun forwards signals to every rank
// and its death ends its daemons; Slurm's `scancel`), and what is left on
// each host is removed by a cleanup step the engine runs there
// (host_cleanup.h).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/launcher/host_cleanup.h"

namespace moex::launcher {

struct LaunchRequest {
  std::string job_id;
  int attempt = 1;
  int world_size = 0;
  int ranks_per_host = 0;                  // 0: the launcher decides
  std::string device = "cpu";              // "cuda": one GPU a rank (Slurm: --gpus-per-task=1)
  std::vector<std::string> hosts;          // only these hosts; empty: any it has
  std::vector<std::string> exclude_hosts;  // never these (lost by an earlier attempt)
  // What each rank runs: `moex worker --job-id ID --attempt N --controller ADDR`.
  std::vector<std::string> rank_argv;
  // "KEY=VALUE", for the launcher and every rank on every host.
  std::vector<std::string> extra_env;
  std::string log_path;  // the job's log: stdout and stderr appended
};

struct Launched {
  pid_t process_group = 0;        // the local launcher process (mpirun, srun) and its group
  std::vector<std::string> argv;  // exactly what ran
};

// What the engine itself says of an attempt (Slurm: its job id, state and
// reason); empty fields where it says nothing.
struct EngineReport {
  std::string job_id;  // "42"
  std::string state;   // "NODE_FAIL", "TIMEOUT", "PREEMPTED", "CANCELLED", "FAILED", "COMPLETED", "RUNNING", ...
  std::string reason;  // the engine's reason field, "" for None
  std::string nodes;   // the hosts it ran on, in the engine's notation
  // "Slurm job 42: NODE_FAIL (reason), on vh[0-1]"; "" when empty.
  std::string Summary(const std::string& engine) const;
  // A state that ends the attempt for a reason outside the job (a node
  // failed, the time limit, preemption).
  bool EngineFailure() const;
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  // At `moex serve` start: the engine's programs are there, its hostfile
  // or partition is usable. The error names what is missing.
  virtual absl::Status CheckReady() const = 0;
  // At submit: the hosts and ranks per host asked for are possible here.
  // The error names the spec field.
  virtual absl::Status CheckRequest(const LaunchRequest& request) const = 0;
  virtual absl::StatusOr<Launched> Launch(const LaunchRequest& request) const = 0;
  // Stops an attempt through the engine: `force` false asks every rank on
  // every host to stop (SIGTERM), true ends it now. Never blocks on a host.
  virtual void Stop(const std::string& job_id, int attempt, pid_t process_group, bool force) const = 0;
  // True when every rank runs on this host (mpirun without a hostfile): the
  // controller may then also signal ranks by pid and command line.
  virtual bool RanksAreLocal() const = 0;
  // The engine's view of an attempt (blocks briefly on a query; never call
  // under a lock). Empty where the engine has none (mpirun).
  virtual EngineReport Report(const std::string& job_id, int attempt) const;
  // Runs the job's host cleanup (host_cleanup.h) once on every host in
  // `hosts` (empty: every host the launcher has) but those in `exclude`
  // (lost: unreachable), as
  // `HostCleanupArgv(moex_binary, request)` through the engine, or in
  // process where the host is this one, and answers one line per host
  // ("<host>: <HostCleanupReport::Summary()>"); an error names the hosts it
  // could not reach. Blocks for up to about request.wait_seconds plus the
  // launch: never call it under a lock or on a request thread.
  virtual absl::StatusOr<std::vector<std::string>> CleanUpHosts(const HostCleanupRequest& request,
                                                                const std::string& moex_binary,
                                                                const std::vector<std::string>& hosts,
                                                                const std::vector<std::string>& exclude) const = 0;
};

// What `moex serve --launcher …` was given.
struct LauncherOptions {
  std::string kind = "mpirun";  // mpirun | slurm
  std::string mpirun = "mpirun";
  // Open MPI options of every launch: these defaults, or --mpirun-args instead.
  std::vector<std::string> mpirun_args = {"--oversubscribe", "--mca", "btl", "self,vader,tcp"};
  std::string hostfile;  // Open MPI syntax; "": every rank on this host
  // Slurm: `srun` makes the allocation and starts the ranks (PMIx).
  std::string srun = "srun", scancel = "scancel", squeue = "squeue", sinfo = "sinfo", scontrol = "scontrol";
  std::string slurm_mpi = "pmix";  // srun --mpi
  std::string slurm_partition, slurm_account;
  std::string slurm_time_limit;  // srun --time, e.g. "60" or "1-00:00:00"; "": the partition's
  std::vector<std::string> srun_args;  // more srun options, as argv words
  std::string work_dir;  // where launch files (per-attempt hostfiles) are written
};

absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherOptions& options);

// `mpirun [args…] [--hostfile F] -np N <rank argv>` in a process group of
// its own. Without a hostfile every rank runs on this host and
// CleanUpHosts cleans it in process; with one, a cleanup step
// `mpirun --hostfile H -np <hosts> --map-by ppr:1:node <cleanup>` runs on
// each of the job's hosts.
std::unique_ptr<Launcher> MakeMpirunLauncher(const LauncherOptions& options);
// `srun --mpi=pmix --job-name moex-<job>-a<attempt> -n N … <rank argv>`:
// srun makes the allocation and starts the ranks on its nodes.
std::unique_ptr<Launcher> MakeSlurmLauncher(const LauncherOptions& options);

// "moex-<job>-a<attempt>": the engine's name for an attempt.
std::string AttemptName(const std::string& job_id, int attempt);
// Splits "--a b  c" into argv words on white space (nothing is interpreted:
// no quotes, no variables); refuses a word with a control character.
absl::StatusOr<std::vector<std::string>> SplitArgs(const std::string& text, const std::string& flag);

}  // namespace moex::launcher
