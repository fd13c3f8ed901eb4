#include "moex/cli/placement_command.h"
#include "moex/core/provenance.h"

#include <fstream>
#include <optional>

#include "absl/strings/str_format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/placement/engine_formats.h"
#include "moex/placement/policy.h"
#include "moex/model/config_view.h"
#include "nlohmann/json.hpp"

namespace moex::cli {

CLI::App* AddPlacementCommand(CLI::App& app, PlacementFlags& f) {
  CLI::App* placement = app.add_subcommand("placement", "Expert placement");
  placement->require_subcommand(1);
  CLI::App* plan = placement->add_subcommand("plan", "Plan where each expert's replicas go, from measured load");
  plan->add_option("--load", f.load, "Load statistics: JSON {\"load\": [[tokens per logical expert], ...one row per layer]}, or SGLang's or vLLM's (--load-format)")->required();
  plan->add_option("--load-format", f.load_format, "moex, sglang ({\"logical_count\": [[steps]][layers][experts]}: SGLang's expert distribution dump, as JSON) or vllm ({\"global_expert_load\": [moe layers][experts]} or expert_load_window + physical_to_logical_map)")
      ->capture_default_str();
  plan->add_option("--replicas", f.replicas, "Physical expert slots in all (logical experts + redundant)")->required();
  plan->add_option("--groups", f.groups, "Expert groups (group-limited routing)")->capture_default_str();
  plan->add_option("--nodes", f.nodes, "Nodes")->capture_default_str();
  plan->add_option("--gpus", f.gpus, "GPUs in all")->required();
  plan->add_option("--policy", f.policy, "refined (default: EPLB refined by local search, lower max/mean, fewer moves with --current) or eplb (DeepSeek's algorithm); moex: refined")
      ->capture_default_str();
  plan->add_option("--current", f.current, "The current placement (this command's --json output): count the moves");
  plan->add_option("--current-format", f.current_format, "moex, sglang or vllm ({\"physical_to_logical_map\": [layers][physical experts]})")
      ->capture_default_str();
  plan->add_option("--export", f.export_format, "Also write the plan as sglang (for --init-expert-location), vllm (EplbState's tensors) or moex (for --current) reads it; needs --out");
  plan->add_option("--out", f.out, "The file --export writes");
  plan->add_option("--export-layers", f.export_layers, "Rows of the exported map (SGLang: the model's num_hidden_layers, dense layers too); default: the load's layers");
  plan->add_option("--export-first-layer", f.export_first_layer, "The exported row of the load's first layer (other rows: the trivial map)")
      ->capture_default_str();
  plan->add_flag("--json", f.json, "Print JSON");
  return placement;
}

namespace {

// A JSON file, refused with the conversion to JSON if it is a torch file.
absl::StatusOr<nlohmann::json> ReadEngineJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char head[4] = {};
  in.read(head, sizeof(head));
  if (placement::LooksLikeTorchFile(path, std::string_view(head, static_cast<size_t>(in.gcount())))) {
    return placement::TorchFileError(path);
  }
  return model::ReadJsonFile(path);
}

absl::StatusOr<placement::Matrix> ReadLoad(const std::string& path, placement::EngineFormat format) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json json, ReadEngineJson(path));
  return placement::ParseEngineLoad(json, format, path);
}

// The current placement: this command's --json output (per layer phy2log),
// or SGLang's or vLLM's physical_to_logical_map.
absl::StatusOr<placement::IndexMatrix> ReadCurrent(const std::string& path, placement::EngineFormat format) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json json, ReadEngineJson(path));
  return placement::ParseEnginePlacement(json, format, path);
}

absl::Status WriteExport(const PlacementFlags& f, const placement::EplbPlacement& plan, int64_t num_logical,
                         placement::EngineFormat format) {
  placement::ExportOptions options;
  options.total_layers = f.export_layers;
  options.first_layer = f.export_first_layer;
  MOEX_ASSIGN_OR_RETURN(nlohmann::json j, placement::ExportPlacement(plan.phy2log, num_logical, format, options));
  std::ofstream file(f.out, std::ios::trunc);
  file << j.dump() << "\n";
  file.close();
  if (!file) return absl::UnavailableError(StrCat("--out ", f.out, ": cannot write the file"));
  return absl::OkStatus();
}

}  // namespace

int RunPlacement(const PlacementFlags& f, std::ostream& out, std::ostream& err) {
  auto fail = [&err](const absl::Status& status) {
    err << "moex placement plan: error: " << status.message() << "\n";
    return 1;
  };
  placement::PlanInput input;
  input.num_replicas = f.replicas, input.num_groups = f.groups, input.num_nodes = f.nodes, input.num_gpus = f.gpus;
  absl::StatusOr<placement::EngineFormat> load_format = placement::ParseEngineFormat(f.load_format);
  if (!load_format.ok()) return fail(absl::InvalidArgumentError(StrCat("--load-format: ", load_format.status().message())));
  absl::StatusOr<placement::EngineFormat> current_format = placement::ParseEngineFormat(f.current_format);
  if (!current_format.ok()) {
    return fail(absl::InvalidArgumentError(StrCat("--current-format: ", current_format.status().message())));
  }
  std::optional<placement::EngineFormat> export_format;
  if (!f.export_format.empty()) {
    absl::StatusOr<placement::EngineFormat> format = placement::ParseEngineFormat(f.export_format);
    if (!format.ok()) return fail(absl::InvalidArgumentError(StrCat("--export: ", format.status().message())));
    if (f.out.empty()) return fail(absl::InvalidArgumentError("--export needs --out FILE"));
    export_format = *format;
  } else if (!f.out.empty()) {
    return fail(absl::InvalidArgumentError("--out needs --export sglang|vllm|moex"));
  }
  absl::StatusOr<placement::Matrix> load = ReadLoad(f.load, *load_format);
  if (!load.ok()) return fail(load.status());
  input.load = std::move(*load);
  if (!f.current.empty()) {
    absl::StatusOr<placement::IndexMatrix> current = ReadCurrent(f.current, *current_format);
    if (!current.ok()) return fail(current.status());
    input.current = std::move(*current);
  }
  absl::StatusOr<placement::EplbPlacement> placement = placement::PlanPlacement(f.policy, input);
  if (!placement.ok()) return fail(placement.status());
  std::optional<int64_t> moves;
  if (!input.current.empty()) moves = placement::CountMoves(input.current, placement->phy2log, f.gpus);
  placement::Matrix gpu_loads = placement::GpuLoads(input.load, *placement, f.gpus);
  const placement::BalanceSummary summary = placement::SummarizeBalance(gpu_loads);
  if (export_format) {
    absl::Status written = WriteExport(f, *placement, static_cast<int64_t>(input.load[0].size()), *export_format);
    if (!written.ok()) return fail(written);
  }
  nlohmann::json j;
  j["policy"] = f.policy;
  j["load_format"] = f.load_format;
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
                           {"imbalance", placement::Imbalance(gpu_loads[l])},
                           {"balancedness", placement::Balancedness(gpu_loads[l])}});
  }
  j["summary"] = {{"max_imbalance", summary.max_imbalance},
                  {"mean_imbalance", summary.mean_imbalance},
                  {"balancedness_sglang", summary.sglang_balancedness},
                  {"balancedness_vllm", summary.vllm_balancedness}};
  if (moves) j["experts_moved"] = *moves;
  if (export_format) j["exported"] = {{"format", f.export_format}, {"path", f.out}};
  if (f.json) {
    j["provenance"] = ProvenanceJson({1, "", ""});
    out << j.dump(2) << "\n";
    return 0;
  }
  for (size_t l = 0; l < input.load.size(); ++l) {
    out << absl::StrFormat("layer %d: imbalance (max/mean GPU load) %.3f; balancedness (mean/max) %.3f; slots GPU by GPU:", l,
                           placement::Imbalance(gpu_loads[l]), placement::Balancedness(gpu_loads[l]));
    const size_t per_gpu = placement->phy2log[l].size() / static_cast<size_t>(f.gpus);
    for (size_t s = 0; s < placement->phy2log[l].size(); ++s) {
      out << (s % per_gpu == 0 ? " |" : "") << " " << placement->phy2log[l][s];
    }
    out << "\n";
  }
  out << absl::StrFormat(
      "all %d layers: imbalance (max/mean) worst %.4f, mean %.4f; balancedness (mean/max) %.4f (SGLang: mean over "
      "layers), %.4f (vLLM: summed over layers)\n",
      input.load.size(), summary.max_imbalance, summary.mean_imbalance, summary.sglang_balancedness,
      summary.vllm_balancedness);
  if (moves) out << "experts moved from --current: " << *moves << "\n";
  if (export_format) out << "wrote the placement for " << f.export_format << " to " << f.out << "\n";
  return 0;
}

}  // namespace moex::cli
