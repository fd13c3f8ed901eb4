#include "moex/cli/placement_command.h"

#include <optional>

#include "absl/strings/str_format.h"
#include "moex/placement/policy.h"
#include "moex/placement/placement_file.h"
#include "moex/core/str_cat.h"
#include "moex/model/config_view.h"
#include "nlohmann/json.hpp"

namespace moex::cli {

CLI::App* AddPlacementCommand(CLI::App& app, PlacementFlags& f) {
  CLI::App* placement = app.add_subcommand("placement", "Expert placement");
  placement->require_subcommand(1);
  CLI::App* plan = placement->add_subcommand("plan", "Plan where each expert's replicas go, from measured load");
  plan->add_option("--load", f.load, "JSON {\"load\": [[tokens per logical expert], ...one row per layer]}")->required();
  plan->add_option("--replicas", f.replicas, "Physical expert slots in all (logical experts + redundant)")->required();
  plan->add_option("--groups", f.groups, "Expert groups (group-limited routing)")->capture_default_str();
  plan->add_option("--nodes", f.nodes, "Nodes")->capture_default_str();
  plan->add_option("--gpus", f.gpus, "GPUs in all")->required();
  plan->add_option("--policy", f.policy, "refined (default: EPLB refined by local search, lower max/mean, fewer moves with --current) or eplb (DeepSeek's algorithm); moex: refined")
      ->capture_default_str();
  plan->add_option("--current", f.current, "The current placement (this command's --json output): count the moves");
  plan->add_flag("--json", f.json, "Print JSON");
  return placement;
}

namespace {

absl::StatusOr<placement::Matrix> ReadLoad(const std::string& path) {
  absl::StatusOr<nlohmann::json> json = model::ReadJsonFile(path);
  if (!json.ok()) return json.status();
  if (!json->is_object() || !json->contains("load")) {
    return absl::InvalidArgumentError(StrCat(path, ": field 'load' must be a non-empty list of rows"));
  }
  const nlohmann::json& rows = json->at("load");
  if (!rows.is_array() || rows.empty()) {
    return absl::InvalidArgumentError(StrCat(path, ": field 'load' must be a non-empty list of rows"));
  }
  placement::Matrix load;
  for (size_t l = 0; l < rows.size(); ++l) {
    if (!rows[l].is_array()) return absl::InvalidArgumentError(StrCat(path, ": load row ", l, " is not a list"));
    load.emplace_back();
    for (size_t e = 0; e < rows[l].size(); ++e) {
      if (!rows[l][e].is_number()) {
        return absl::InvalidArgumentError(StrCat(path, ": load[", l, "][", e, "] is not a number"));
      }
      load.back().push_back(rows[l][e].get<double>());
    }
  }
  return load;
}

// The current placement: this command's --json output (per layer phy2log).
absl::StatusOr<placement::IndexMatrix> ReadCurrent(const std::string& path) {
  absl::StatusOr<nlohmann::json> json = model::ReadJsonFile(path);
  if (!json.ok()) return json.status();
  return placement::ParsePlacementFile(*json, path);
}

}  // namespace

int RunPlacement(const PlacementFlags& f, std::ostream& out, std::ostream& err) {
  auto fail = [&err](const absl::Status& status) {
    err << "moex placement plan: error: " << status.message() << "\n";
    return 1;
  };
  placement::PlanInput input;
  input.num_replicas = f.replicas, input.num_groups = f.groups, input.num_nodes = f.nodes, input.num_gpus = f.gpus;
  absl::StatusOr<placement::Matrix> load = ReadLoad(f.load);
  if (!load.ok()) return fail(load.status());
  input.load = std::move(*load);
  if (!f.current.empty()) {
    absl::StatusOr<placement::IndexMatrix> current = ReadCurrent(f.current);
    if (!current.ok()) return fail(current.status());
    input.current = std::move(*current);
  }
  absl::StatusOr<placement::EplbPlacement> placement = placement::PlanPlacement(f.policy, input);
  if (!placement.ok()) return fail(placement.status());
  std::optional<int64_t> moves;
  if (!input.current.empty()) moves = placement::CountMoves(input.current, placement->phy2log, f.gpus);
  placement::Matrix gpu_loads = placement::GpuLoads(input.load, *placement, f.gpus);
  nlohmann::json j;
  j["policy"] = f.policy;
  j["replicas"] = f.replicas;
  j["groups"] = f.groups;
  j["nodes"] = f.nodes;
  j["gpus"] = f.gpus;
  j["layers"] = nlohmann::json::array();
  for (size_t l = 0; l < input.load.size(); ++l) {
    j["layers"].push_back({{"phy2log", placement->phy2log[l]},
                           {"log2phy", placement->log2phy[l]},
                           {"logcnt", placement->logcnt[l]},
                           {"gpu_load", gpu_loads[l]},
                           {"imbalance", placement::Imbalance(gpu_loads[l])}});
  }
  if (moves) j["experts_moved"] = *moves;
  if (f.json) {
    out << j.dump(2) << "\n";
    return 0;
  }
  for (size_t l = 0; l < input.load.size(); ++l) {
    out << absl::StrFormat("layer %d: imbalance (max/mean GPU load) %.3f; slots GPU by GPU:", l,
                           placement::Imbalance(gpu_loads[l]));
    const size_t per_gpu = placement->phy2log[l].size() / static_cast<size_t>(f.gpus);
    for (size_t s = 0; s < placement->phy2log[l].size(); ++s) {
      out << (s % per_gpu == 0 ? " |" : "") << " " << placement->phy2log[l][s];
    }
    out << "\n";
  }
  if (moves) out << "experts moved from --current: " << *moves << "\n";
  return 0;
}

}  // namespace moex::cli
