#include "moex/cli/plan_command.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "moex/core/format.h"
#include "moex/model/model_loader.h"
#include "moex/model/param_count.h"
#include "moex/model/presets.h"
#include "moex/plan/plan_report.h"
#include "moex/plan/planner.h"

namespace moex::cli {

CLI::App* AddPlanCommand(CLI::App& app, PlanFlags& flags) {
  CLI::App* plan = app.add_subcommand(
      "plan", "Total vs active parameters, FLOPs per token, memory, and GPUs a model needs");
  flags.model = std::string(model::kDefaultModel);
  plan->add_option("--model,-m", flags.model,
                   "Preset name, a Hugging Face config.json, or a folder holding one")
      ->capture_default_str();
  plan->add_option("--dtype", flags.dtype, "Weight dtype: fp32, bf16, fp8 or fp4")
      ->capture_default_str();
  plan->add_option("--context", flags.context, "Context length a token attends to (FLOPs)")
      ->capture_default_str();
  plan->add_option("--gpus", flags.gpus, "Plan a deployment on this many GPUs");
  plan->add_option("--gpus-per-node", flags.gpus_per_node, "GPUs per node")->capture_default_str();
  plan->add_option("--gpu-mem-gib", flags.gpu_mem_gib, "Memory of one GPU in GiB")
      ->capture_default_str();
  plan->add_flag("--json", flags.json, "Print JSON instead of a table");
  plan->add_flag("--list", flags.list, "List the presets and the model types moex reads");
  return plan;
}

namespace {

int ListPresets(std::ostream& out, std::ostream& err) {
  out << absl::StrFormat("%-26s %-12s %10s %10s\n", "preset", "model_type", "total", "active");
  for (const model::Preset& preset : model::AllPresets()) {
    absl::StatusOr<model::ModelArch> arch = model::LoadModel(preset.name);
    if (!arch.ok()) {
      err << "moex plan: preset '" << preset.name << "' is broken: " << arch.status().message() << "\n";
      return 1;
    }
    model::ParamCount count = model::CountParams(*arch);
    out << absl::StrFormat("%-26s %-12s %10s %10s\n", preset.name, arch->model_type,
                           FormatCount(static_cast<double>(count.total)),
                           FormatCount(static_cast<double>(count.active)));
  }
  out << "\nmodel types read from config.json: "
      << absl::StrJoin(model::SupportedModelTypes(), ", ") << "\n";
  return 0;
}

}  // namespace

int RunPlan(const PlanFlags& flags, std::ostream& out, std::ostream& err) {
  if (flags.list) return ListPresets(out, err);
  auto fail = [&err](const absl::Status& status) {
    err << "moex plan: error: " << status.message() << "\n";
    return 1;
  };
  absl::StatusOr<plan::WeightDtype> dtype = plan::ParseWeightDtype(flags.dtype);
  if (!dtype.ok()) return fail(dtype.status());
  plan::PlanOptions options;
  options.dtype = *dtype;
  options.context = flags.context;
  options.gpus = flags.gpus;
  options.gpus_per_node = flags.gpus_per_node;
  options.gpu_mem_gib = flags.gpu_mem_gib;

  absl::StatusOr<model::ModelArch> arch = model::LoadModel(flags.model);
  if (!arch.ok()) return fail(arch.status());
  absl::StatusOr<plan::Plan> plan = plan::MakePlan(*arch, options);
  if (!plan.ok()) return fail(plan.status());
  if (flags.json) {
    out << plan::PlanToJson(*plan).dump(2) << "\n";
  } else {
    out << plan::PlanToTable(*plan);
  }
  return 0;
}

}  // namespace moex::cli
