// What every launcher shares: names, argument splitting, the engine's
// report, and the choice of backend.
#include "moex/launcher/launcher.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_split.h"
#include "moex/core/str_cat.h"

namespace moex::launcher {

std::string AttemptName(const std::string& job_id, int attempt) { return StrCat("moex-", job_id, "-a", attempt); }

absl::StatusOr<std::vector<std::string>> SplitArgs(const std::string& text, const std::string& flag) {
  std::vector<std::string> words;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty())) {
    for (char c : word) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError(StrCat(flag, ": '", word, "' has a control character"));
      }
    }
    words.emplace_back(word);
  }
  return words;
}

std::string EngineReport::Summary(const std::string& engine) const {
  if (job_id.empty() && state.empty()) return "";
  std::string text = StrCat(engine, " job ", job_id.empty() ? "?" : job_id, ": ", state.empty() ? "state unknown" : state);
  if (!reason.empty() && reason != "None") text += StrCat(" (", reason, ")");
  if (!nodes.empty() && nodes != "(null)") text += StrCat(", on ", nodes);
  return text;
}

bool EngineReport::EngineFailure() const {
  return state == "NODE_FAIL" || state == "TIMEOUT" || state == "PREEMPTED" || state == "BOOT_FAIL" ||
         state == "DEADLINE" || state == "OUT_OF_MEMORY";
}

EngineReport Launcher::Report(const std::string&, int) const { return {}; }

absl::StatusOr<std::unique_ptr<Launcher>> MakeLauncher(const LauncherOptions& options) {
  if (options.kind == "mpirun") {
    if (!options.slurm_partition.empty() || !options.slurm_account.empty() || !options.slurm_time_limit.empty()) {
      return absl::InvalidArgumentError("--slurm-partition, --slurm-account and --slurm-time-limit need --launcher slurm");
    }
    return MakeMpirunLauncher(options);
  }
  if (options.kind == "slurm") {
    if (!options.hostfile.empty()) {
      return absl::InvalidArgumentError("--hostfile is for --launcher mpirun; Slurm chooses the hosts of its allocations");
    }
    return MakeSlurmLauncher(options);
  }
  return absl::InvalidArgumentError(StrCat("--launcher '", options.kind, "' is not known (known: mpirun, slurm)"));
}

}  // namespace moex::launcher
