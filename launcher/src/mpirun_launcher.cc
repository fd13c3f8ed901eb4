// The mpirun launcher: every rank on this host, or spread over the hosts of
// an Open MPI hostfile (the hosts reached by Open MPI's own agent, ssh or
// what --mpirun-args names).
#include <limits.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>

#include "absl/strings/str_join.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"
#include "moex/launcher/hostfile.h"
#include "moex/launcher/launcher.h"

namespace moex::launcher {
namespace {

std::string ThisHost() {
  char host[HOST_NAME_MAX + 1] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') return "this host";
  return host;
}

// Open MPI refuses root without these (CI and containers run as root).
std::vector<std::string> RootEnv() {
  if (geteuid() != 0) return {};
  return {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
}

class MpirunLauncher final : public Launcher {
 public:
  explicit MpirunLauncher(LauncherOptions options) : options_(std::move(options)) {}
  std::string name() const override { return options_.hostfile.empty() ? "mpirun" : "mpirun (hostfile)"; }
  bool RanksAreLocal() const override { return options_.hostfile.empty(); }

  absl::Status CheckReady() const override {
    if (absl::StatusOr<std::string> found = FindProgram(options_.mpirun); !found.ok()) {
      return absl::FailedPreconditionError(StrCat("--launcher mpirun: ", found.status().message()));
    }
    if (options_.hostfile.empty()) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(hosts_, ReadHostfile(options_.hostfile));
    std::error_code error;
    std::filesystem::create_directories(options_.work_dir, error);
    if (error) return absl::PermissionDeniedError(StrCat("cannot create ", options_.work_dir, ": ", error.message()));
    return absl::OkStatus();
  }

  absl::Status CheckRequest(const LaunchRequest& request) const override {
    if (options_.hostfile.empty()) {
      if (!request.hosts.empty()) {
        return absl::InvalidArgumentError("spec.hosts: this controller runs every rank on its own host (moex serve "
                                          "has no --hostfile), so hosts cannot be chosen");
      }
      if (request.ranks_per_host > 0 && request.ranks_per_host < request.world_size) {
        return absl::InvalidArgumentError(StrCat("spec.ranks_per_host ", request.ranks_per_host, " < world_size ",
                                                 request.world_size, ": this controller has one host (no --hostfile)"));
      }
      return absl::OkStatus();
    }
    absl::StatusOr<std::vector<HostSlots>> hosts = SelectHosts(hosts_, request.hosts, request.exclude_hosts);
    if (!hosts.ok()) return absl::InvalidArgumentError(StrCat("spec.hosts: ", hosts.status().message()));
    if (hosts->empty()) {
      return absl::FailedPreconditionError(StrCat("no host is left to run on (excluded: ",
                                                  absl::StrJoin(request.exclude_hosts, ", "), ")"));
    }
    if (request.ranks_per_host > 0 &&
        static_cast<int64_t>(request.ranks_per_host) * static_cast<int64_t>(hosts->size()) < request.world_size) {
      return absl::InvalidArgumentError(StrCat("spec.ranks_per_host ", request.ranks_per_host, " on ", hosts->size(),
                                               " host(s) holds fewer than world_size ", request.world_size, " ranks"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Launched> Launch(const LaunchRequest& request) const override {
    if (request.world_size < 1) return absl::InvalidArgumentError("mpirun launch: world size below 1");
    MOEX_RETURN_IF_ERROR(CheckRequest(request));
    SpawnOptions spawn;
    spawn.log_path = request.log_path;
    spawn.argv = {options_.mpirun, "-np", std::to_string(request.world_size)};
    spawn.argv.insert(spawn.argv.end(), options_.mpirun_args.begin(), options_.mpirun_args.end());
    if (!options_.hostfile.empty()) {
      MOEX_ASSIGN_OR_RETURN(std::vector<HostSlots> hosts, SelectHosts(hosts_, request.hosts, request.exclude_hosts));
      if (hosts.empty()) return absl::FailedPreconditionError("no host is left to run on");
      const std::string path =
          (std::filesystem::path(options_.work_dir) / StrCat(AttemptName(request.job_id, request.attempt), ".hostfile")).string();
      MOEX_RETURN_IF_ERROR(WriteHostfile(path, hosts));
      spawn.argv.insert(spawn.argv.end(), {"--hostfile", path});
      if (request.ranks_per_host > 0) {
        spawn.argv.insert(spawn.argv.end(), {"--map-by", StrCat("ppr:", request.ranks_per_host, ":node")});
      }
    }
    // Remote ranks get no environment of ours unless it is exported.
    spawn.extra_env = RootEnv();
    for (const std::string& env : request.extra_env) {
      spawn.extra_env.push_back(env);
      spawn.argv.insert(spawn.argv.end(), {"-x", env.substr(0, env.find('='))});
    }
    spawn.argv.insert(spawn.argv.end(), request.rank_argv.begin(), request.rank_argv.end());
    MOEX_ASSIGN_OR_RETURN(pid_t group, SpawnInNewGroup(spawn));
    return Launched{.process_group = group, .argv = spawn.argv};
  }

  void Stop(const std::string&, int, pid_t process_group, bool force) const override {
    // mpirun forwards SIGTERM to every rank on every host; killed, it takes
    // its daemons (and their ranks) with it.
    if (process_group > 0) (void)SignalGroup(process_group, force ? SIGKILL : SIGTERM);
  }

  absl::StatusOr<std::vector<std::string>> CleanUpHosts(const HostCleanupRequest& request, const std::string& moex_binary,
                                                        const std::vector<std::string>& hosts,
                                                        const std::vector<std::string>& exclude) const override {
    if (options_.hostfile.empty()) {
      MOEX_ASSIGN_OR_RETURN(HostCleanupReport report, CleanJobOnHost(request));
      return std::vector<std::string>{StrCat(ThisHost(), ": ", report.Summary())};
    }
    // The job's hosts as the hostfile names them; one the hostfile does not
    // know (an alias) makes it clean every host rather than none.
    std::vector<std::string> notes;
    std::vector<std::string> only = hosts;
    for (const std::string& host : hosts) {
      if (std::none_of(hosts_.begin(), hosts_.end(), [&](const HostSlots& h) { return SameHost(h.host, host); })) {
        notes.push_back(StrCat(host, ": not a host of the hostfile ", options_.hostfile, "; every host of it cleaned"));
        only.clear();
        break;
      }
    }
    absl::StatusOr<std::vector<HostSlots>> kept = SelectHosts(hosts_, only, exclude);
    if (!kept.ok()) return kept.status();
    std::vector<HostSlots> targets;
    for (const HostSlots& h : *kept) targets.push_back({h.host, 1});
    if (targets.empty()) return notes;
    static std::atomic<int> counter{0};
    const std::string path = (std::filesystem::path(options_.work_dir) /
                              StrCat("moex-", request.job_id, "-cleanup-", getpid(), "-", counter++, ".hostfile")).string();
    MOEX_RETURN_IF_ERROR(WriteHostfile(path, targets));
    CommandOptions command;
    command.argv = {options_.mpirun, "-np", std::to_string(targets.size())};
    command.argv.insert(command.argv.end(), options_.mpirun_args.begin(), options_.mpirun_args.end());
    command.argv.insert(command.argv.end(), {"--hostfile", path, "--map-by", "ppr:1:node"});
    for (const std::string& word : HostCleanupArgv(moex_binary, request)) command.argv.push_back(word);
    command.extra_env = RootEnv();
    command.timeout_seconds = request.wait_seconds + 60;
    absl::StatusOr<CommandResult> ran = RunCommand(command);
    std::filesystem::remove(path);
    std::vector<std::string> names;
    for (const HostSlots& h : targets) names.push_back(h.host);
    if (!ran.ok()) return ran.status();
    std::vector<std::string> lines = CleanupLines(ran->out);
    lines.insert(lines.begin(), notes.begin(), notes.end());
    if (!ran->ok()) {
      return absl::UnavailableError(StrCat("the cleanup step on ", absl::StrJoin(names, ", "), " ", ran->Describe(),
                                           lines.empty() ? "" : StrCat("; ", absl::StrJoin(lines, "; "))));
    }
    return lines;
  }

 private:
  // "moex worker --cleanup: <host>: …" lines, as "<host>: …".
  static std::vector<std::string> CleanupLines(const std::string& out) {
    std::vector<std::string> lines;
    const std::string prefix = "moex worker --cleanup: ";
    size_t start = 0;
    while (start < out.size()) {
      size_t end = out.find('\n', start);
      if (end == std::string::npos) end = out.size();
      const std::string line = out.substr(start, end - start);
      if (line.rfind(prefix, 0) == 0) lines.push_back(line.substr(prefix.size()));
      start = end + 1;
    }
    return lines;
  }

  LauncherOptions options_;
  mutable std::vector<HostSlots> hosts_;  // the hostfile, read by CheckReady
};

}  // namespace

std::unique_ptr<Launcher> MakeMpirunLauncher(const LauncherOptions& options) {
  return std::make_unique<MpirunLauncher>(options);
}

}  // namespace moex::launcher
