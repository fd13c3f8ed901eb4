#include <unistd.h>

#include <limits.h>

#include "moex/core/status_macros.h"
#include "moex/core/subprocess.h"
#include "moex/launcher/launcher.h"

namespace moex::launcher {
namespace {

class MpirunLauncher final : public Launcher {
 public:
  MpirunLauncher(std::string mpirun, std::vector<std::string> args) : mpirun_(std::move(mpirun)), args_(std::move(args)) {}
  std::string name() const override { return "mpirun"; }

  absl::StatusOr<Launched> Launch(const LaunchRequest& request) const override {
    if (request.world_size < 1) return absl::InvalidArgumentError("mpirun launch: world size below 1");
    SpawnOptions spawn;
    spawn.log_path = request.log_path;
    spawn.argv = {mpirun_, "-np", std::to_string(request.world_size)};
    spawn.argv.insert(spawn.argv.end(), args_.begin(), args_.end());
    spawn.argv.insert(spawn.argv.end(), request.rank_argv.begin(), request.rank_argv.end());
    spawn.extra_env = request.extra_env;
    // Open MPI refuses root without these (CI and containers run as root).
    if (geteuid() == 0) {
      spawn.extra_env.insert(spawn.extra_env.begin(), {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"});
    }
    MOEX_ASSIGN_OR_RETURN(pid_t group, SpawnInNewGroup(spawn));
    return Launched{.process_group = group, .argv = spawn.argv};
  }

  absl::StatusOr<std::vector<std::string>> CleanUpHosts(const HostCleanupRequest& request,
                                                        const std::string& /*moex_binary*/) const override {
    MOEX_ASSIGN_OR_RETURN(HostCleanupReport report, CleanJobOnHost(request));
    char host[HOST_NAME_MAX + 1] = {};
    if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
    return std::vector<std::string>{std::string(host[0] != '\0' ? host : "this host") + ": " + report.Summary()};
  }

 private:
  std::string mpirun_;
  std::vector<std::string> args_;
};

}  // namespace

std::unique_ptr<Launcher> MakeMpirunLauncher(std::string mpirun, std::vector<std::string> args) {
  return std::make_unique<MpirunLauncher>(std::move(mpirun), std::move(args));
}

}  // namespace moex::launcher
