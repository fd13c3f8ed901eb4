// The Slurm launcher: each attempt is `srun`, which makes the allocation
// (partition, account, time limit, nodes asked for) and starts the ranks
// through PMIx; the attempt is named moex-<job>-a<N> in Slurm, so that it
// can be found, reported and cancelled by name even before its ranks start.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"
#include "moex/launcher/hostfile.h"
#include "moex/launcher/launcher.h"

namespace moex::launcher {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) lines.emplace_back(line);
  return lines;
}

class SlurmLauncher final : public Launcher {
 public:
  explicit SlurmLauncher(LauncherOptions options) : options_(std::move(options)) {}
  ~SlurmLauncher() override { Reap(true); }
  std::string name() const override { return "slurm"; }
  bool RanksAreLocal() const override { return false; }

  absl::Status CheckReady() const override {
    for (const std::string* program :
         {&options_.srun, &options_.scancel, &options_.squeue, &options_.sinfo, &options_.scontrol}) {
      if (absl::StatusOr<std::string> found = FindProgram(*program); !found.ok()) {
        return absl::FailedPreconditionError(StrCat("--launcher slurm: ", found.status().message()));
      }
    }
    MOEX_ASSIGN_OR_RETURN(std::vector<std::string> partitions, Query({options_.sinfo, "-h", "-o", "%R"}));
    if (!options_.slurm_partition.empty() &&
        std::find(partitions.begin(), partitions.end(), options_.slurm_partition) == partitions.end()) {
      return absl::InvalidArgumentError(StrCat("--slurm-partition '", options_.slurm_partition,
                                               "' is not a partition of this Slurm cluster (it has ",
                                               absl::StrJoin(partitions, ", "), ")"));
    }
    return absl::OkStatus();
  }

  absl::Status CheckRequest(const LaunchRequest& request) const override {
    if (request.hosts.empty()) return absl::OkStatus();
    if (request.ranks_per_host > 0 &&
        static_cast<int64_t>(request.ranks_per_host) * static_cast<int64_t>(request.hosts.size()) < request.world_size) {
      return absl::InvalidArgumentError(StrCat("spec.ranks_per_host ", request.ranks_per_host, " on ",
                                               request.hosts.size(), " host(s) holds fewer than world_size ",
                                               request.world_size, " ranks"));
    }
    std::vector<std::string> args = {options_.sinfo, "-h", "-N", "-o", "%N"};
    if (!options_.slurm_partition.empty()) args.insert(args.end(), {"-p", options_.slurm_partition});
    MOEX_ASSIGN_OR_RETURN(std::vector<std::string> nodes, Query(args));
    for (const std::string& host : request.hosts) {
      if (std::find(nodes.begin(), nodes.end(), host) == nodes.end()) {
        return absl::InvalidArgumentError(StrCat("spec.hosts: '", host, "' is not a node of ",
                                                 options_.slurm_partition.empty() ? "this Slurm cluster"
                                                                                  : "partition " + options_.slurm_partition,
                                                 " (it has ", absl::StrJoin(nodes, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Launched> Launch(const LaunchRequest& request) const override {
    if (request.world_size < 1) return absl::InvalidArgumentError("srun launch: world size below 1");
    Reap(false);
    SpawnOptions spawn;
    spawn.log_path = request.log_path;
    spawn.argv = {options_.srun, StrCat("--mpi=", options_.slurm_mpi),
                  StrCat("--job-name=", AttemptName(request.job_id, request.attempt)),
                  StrCat("--ntasks=", request.world_size), "--kill-on-bad-exit=1"};
    AddAllocationArgs(&spawn.argv);
    // Hosts asked for, less those lost: exactly these nodes (--nodelist
    // alone lets Slurm add more).
    std::vector<std::string> hosts;
    for (const std::string& host : request.hosts) {
      if (std::find(request.exclude_hosts.begin(), request.exclude_hosts.end(), host) == request.exclude_hosts.end()) {
        hosts.push_back(host);
      }
    }
    if (!request.hosts.empty() && hosts.empty()) {
      return absl::FailedPreconditionError(StrCat("no host is left to run on: spec.hosts (", absl::StrJoin(request.hosts, ", "),
                                                  ") were all lost"));
    }
    if (request.ranks_per_host > 0) spawn.argv.push_back(StrCat("--ntasks-per-node=", request.ranks_per_host));
    if (!hosts.empty()) {
      spawn.argv.push_back(StrCat("--nodes=", hosts.size()));
      spawn.argv.push_back(StrCat("--nodelist=", absl::StrJoin(hosts, ",")));
    } else if (request.ranks_per_host > 0) {
      spawn.argv.push_back(StrCat("--nodes=", (request.world_size + request.ranks_per_host - 1) / request.ranks_per_host));
    }
    if (!request.exclude_hosts.empty()) spawn.argv.push_back(StrCat("--exclude=", absl::StrJoin(request.exclude_hosts, ",")));
    if (request.device == "cuda") spawn.argv.push_back("--gpus-per-task=1");
    spawn.argv.insert(spawn.argv.end(), options_.srun_args.begin(), options_.srun_args.end());
    spawn.argv.insert(spawn.argv.end(), request.rank_argv.begin(), request.rank_argv.end());
    spawn.extra_env = request.extra_env;  // srun exports the whole environment to the ranks
    MOEX_ASSIGN_OR_RETURN(pid_t group, SpawnInNewGroup(spawn));
    return Launched{.process_group = group, .argv = spawn.argv};
  }

  void Stop(const std::string& job_id, int attempt, pid_t process_group, bool force) const override {
    Reap(false);
    // srun forwards SIGTERM to every task; scancel also reaches an attempt
    // still waiting in the queue, or one whose srun is gone.
    if (process_group > 0) (void)SignalGroup(process_group, force ? SIGKILL : SIGTERM);
    std::vector<std::string> argv = {options_.scancel, StrCat("--name=", AttemptName(job_id, attempt)),
                                     StrCat("--user=", getuid())};
    if (!force) argv.push_back("--signal=TERM");
    SpawnOptions spawn;
    spawn.argv = argv;
    spawn.log_path = "/dev/null";
    absl::StatusOr<pid_t> started = SpawnInNewGroup(spawn);
    if (started.ok()) {
      std::lock_guard<std::mutex> lock(mutex_);
      helpers_.push_back(*started);
    }
  }

  EngineReport Report(const std::string& job_id, int attempt) const override {
    absl::StatusOr<std::vector<std::string>> lines =
        Query({options_.squeue, "-h", "-t", "all", StrCat("--name=", AttemptName(job_id, attempt)),
               StrCat("--user=", getuid()), "-o", "%i|%T|%r|%N"},
              /*timeout_seconds=*/5);
    EngineReport report;
    if (!lines.ok() || lines->empty()) return report;
    std::vector<std::string> fields = absl::StrSplit(lines->back(), '|');
    fields.resize(4);
    report.job_id = fields[0];
    report.state = fields[1];
    report.reason = fields[2];
    report.nodes = fields[3];
    return report;
  }

  absl::StatusOr<std::vector<std::string>> CleanUpHosts(const HostCleanupRequest& request, const std::string& moex_binary,
                                                        const std::vector<std::string>& hosts,
                                                        const std::vector<std::string>& exclude) const override {
    std::vector<std::string> targets = hosts;
    if (targets.empty()) {
      // Where Slurm put the job's attempts (this one, or every one when the
      // job ended); none: it never got a node, nothing to clean.
      MOEX_ASSIGN_OR_RETURN(std::vector<std::string> jobs, Query({options_.squeue, "-h", "-t", "all",
                                                                  StrCat("--user=", getuid()), "-o", "%j|%N"}));
      const std::string name = request.attempt > 0 ? AttemptName(request.job_id, request.attempt)
                                                   : StrCat("moex-", request.job_id, "-a");
      for (const std::string& line : jobs) {
        const std::string job_name = line.substr(0, line.find('|'));
        const std::string nodes = line.find('|') == std::string::npos ? "" : line.substr(line.find('|') + 1);
        const bool ours = request.attempt > 0 ? job_name == name : job_name.rfind(name, 0) == 0;
        if (!ours || nodes.empty() || nodes == "(null)") continue;
        MOEX_ASSIGN_OR_RETURN(std::vector<std::string> expanded, Query({options_.scontrol, "show", "hostnames", nodes}));
        targets.insert(targets.end(), expanded.begin(), expanded.end());
      }
      std::sort(targets.begin(), targets.end());
      targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
      if (targets.empty()) return std::vector<std::string>{"(no node): Slurm allocated none to it, nothing to clean"};
    }
    targets.erase(std::remove_if(targets.begin(), targets.end(),
                                 [&](const std::string& host) {
                                   return std::find(exclude.begin(), exclude.end(), host) != exclude.end();
                                 }),
                  targets.end());
    if (targets.empty()) return std::vector<std::string>{};
    CommandOptions command;
    command.argv = {options_.srun, StrCat("--job-name=moex-", request.job_id, "-cleanup"),
                    StrCat("--nodes=", targets.size()), StrCat("--ntasks=", targets.size()), "--ntasks-per-node=1",
                    StrCat("--nodelist=", absl::StrJoin(targets, ",")), "--immediate=30", "--time=5"};
    AddAllocationArgs(&command.argv, /*with_time=*/false);
    command.argv.insert(command.argv.end(), options_.srun_args.begin(), options_.srun_args.end());
    for (const std::string& word : HostCleanupArgv(moex_binary, request)) command.argv.push_back(word);
    command.timeout_seconds = request.wait_seconds + 90;
    MOEX_ASSIGN_OR_RETURN(CommandResult ran, RunCommand(command));
    std::vector<std::string> lines;
    const std::string prefix = "moex worker --cleanup: ";
    for (const std::string& line : Lines(ran.out)) {
      if (line.rfind(prefix, 0) == 0) lines.push_back(line.substr(prefix.size()));
    }
    if (!ran.ok()) {
      return absl::UnavailableError(StrCat("the cleanup step (srun) on ", absl::StrJoin(targets, ", "), " ",
                                           ran.Describe(), lines.empty() ? "" : "; " + absl::StrJoin(lines, "; ")));
    }
    return lines;
  }

 private:
  void AddAllocationArgs(std::vector<std::string>* argv, bool with_time = true) const {
    if (!options_.slurm_partition.empty()) argv->push_back(StrCat("--partition=", options_.slurm_partition));
    if (!options_.slurm_account.empty()) argv->push_back(StrCat("--account=", options_.slurm_account));
    if (with_time && !options_.slurm_time_limit.empty()) argv->push_back(StrCat("--time=", options_.slurm_time_limit));
  }

  // A query's lines; an error names the command and what it said.
  static absl::StatusOr<std::vector<std::string>> Query(const std::vector<std::string>& argv,
                                                        double timeout_seconds = 15) {
    CommandOptions command;
    command.argv = argv;
    command.timeout_seconds = timeout_seconds;
    MOEX_ASSIGN_OR_RETURN(CommandResult ran, RunCommand(command));
    if (!ran.ok()) {
      return absl::UnavailableError(StrCat("`", absl::StrJoin(argv, " "), "` ", ran.Describe()));
    }
    return Lines(ran.out);
  }

  // scancel processes started by Stop, reaped here (the controller reaps
  // only its launches).
  // `wait`: up to 5 s, then what is left is killed and reaped.
  void Reap(bool wait) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (int round = 0; round < (wait ? 500 : 1) && !helpers_.empty(); ++round) {
      for (auto it = helpers_.begin(); it != helpers_.end();) {
        int status = 0;
        const pid_t done = waitpid(*it, &status, WNOHANG);
        it = (done == *it || (done < 0 && errno == ECHILD)) ? helpers_.erase(it) : std::next(it);
      }
      if (wait && !helpers_.empty()) usleep(10000);
    }
    if (!wait) return;
    for (pid_t pid : helpers_) {
      kill(-pid, SIGKILL);
      int status = 0;
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
    }
    helpers_.clear();
  }

  LauncherOptions options_;
  mutable std::mutex mutex_;
  mutable std::vector<pid_t> helpers_;
};

}  // namespace

std::unique_ptr<Launcher> MakeSlurmLauncher(const LauncherOptions& options) {
  return std::make_unique<SlurmLauncher>(options);
}

}  // namespace moex::launcher
