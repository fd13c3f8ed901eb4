#include "moex/cli/plan_command.h"
#include "moex/core/provenance.h"

#include <optional>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "moex/core/format.h"
#include "moex/model/model_loader.h"
#include "moex/model/param_count.h"
#include "moex/model/presets.h"
#include "moex/plan/plan_report.h"
#include "moex/plan/perf_model.h"
#include "moex/plan/planner.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/config_view.h"
#include "moex/model/hf_cache.h"
#include "nlohmann/json.hpp"

namespace moex::cli {

CLI::App* AddPlanCommand(CLI::App& app, PlanFlags& flags) {
  CLI::App* plan = app.add_subcommand(
      "plan", "Total vs active parameters, FLOPs per token, memory, and GPUs a model needs");
  flags.model = std::string(model::kDefaultModel);
  plan->add_option("--model,-m", flags.model,
                   "Preset name, a Hugging Face config.json, a folder holding one, or a Hugging Face id "
                   "(org/name) in the local Hugging Face cache")
      ->capture_default_str();
  plan->add_option("--dtype", flags.dtype,
                   "Weight dtype: fp32, bf16, fp16, fp8 or fp4 (default: the config's quantization_config, else "
                   "its torch_dtype; bf16 for presets)");
  plan->add_option("--context", flags.context, "Context length a token attends to (FLOPs)")
      ->capture_default_str();
  plan->add_option("--gpus", flags.gpus, "Plan a deployment on this many GPUs");
  plan->add_option("--gpus-per-node", flags.gpus_per_node, "GPUs per node")->capture_default_str();
  plan->add_option("--gpu-mem-gib", flags.gpu_mem_gib, "Memory of one GPU in GiB")
      ->capture_default_str();
  plan->add_flag("--json", flags.json, "Print JSON instead of a table");
  plan->add_flag("--list", flags.list, "List the presets and the model types moex reads");
  plan->add_flag("--perf", flags.perf, "Model one MoE layer's dispatch, experts and combine per EP size");
  plan->add_option("--cluster", flags.cluster, "h100, h800, h200, b200, or a profile JSON file")->capture_default_str();
  plan->add_option("--ep", flags.ep, "EP sizes, comma-separated")->capture_default_str();
  plan->add_option("--tokens-per-rank", flags.tokens_per_rank, "Tokens each rank dispatches per layer")->capture_default_str();
  plan->add_option("--dispatch-dtype", flags.dispatch_dtype, "fp8, bf16 or fp32")->capture_default_str();
  plan->add_option("--combine-dtype", flags.combine_dtype, "bf16 or fp32")->capture_default_str();
  plan->add_option("--expert-dtype", flags.expert_dtype, "Expert weights and GEMM inputs: fp8, bf16 or fp32")->capture_default_str();
  plan->add_option("--routing-skew", flags.routing_skew, "Zipf exponent of expert popularity (0: uniform)")->capture_default_str();
  plan->add_option("--mode", flags.mode,
                   "normal (DeepEP's normal kernels, bandwidth-bound) or low-latency (its low-latency kernels: a "
                   "message per (token, expert), fixed buffers; for small batches, e.g. --tokens-per-rank 128)")
      ->capture_default_str();
  plan->add_option("--ll-intranode", flags.ll_intranode,
                   "With --mode low-latency: same-node messages through the NIC (rdma, DeepEP's kernels as first "
                   "published) or over NVLink (nvlink, DeepEP since PR #173, NCCL EP)")
      ->capture_default_str();
  plan->add_option("--load", flags.load, "Measured load {\"load\": [[tokens per expert]]} (first row) instead of a skew");
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

absl::StatusOr<std::vector<int64_t>> ParseList(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    int64_t value = 0;
    if (!absl::SimpleAtoi(part, &value)) return absl::InvalidArgumentError(StrCat("--ep '", text, "' is not a list of integers"));
    out.push_back(value);
  }
  if (out.empty()) return absl::InvalidArgumentError("--ep is empty");
  return out;
}

absl::StatusOr<std::vector<double>> ReadLoadRow(const std::string& path) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json j, model::ReadJsonFile(path));
  if (!j.is_object() || !j.contains("load") || !j["load"].is_array() || j["load"].empty() || !j["load"][0].is_array()) {
    return absl::InvalidArgumentError(StrCat(path, ": expected {\"load\": [[tokens per logical expert, ...], ...]}"));
  }
  std::vector<double> row;
  for (size_t e = 0; e < j["load"][0].size(); ++e) {
    const nlohmann::json& v = j["load"][0][e];
    if (!v.is_number() || v.get<double>() < 0) return absl::InvalidArgumentError(StrCat(path, ": load[0][", e, "] is not a number >= 0"));
    row.push_back(v.get<double>());
  }
  return row;
}

absl::StatusOr<plan::PerfReport> Perf(const PlanFlags& flags, const model::ModelArch& arch) {
  plan::PerfOptions o;
  MOEX_ASSIGN_OR_RETURN(o.cluster, plan::LoadProfile(flags.cluster));
  if (flags.gpus_per_node != 8) o.cluster.gpus_per_node = flags.gpus_per_node;
  MOEX_ASSIGN_OR_RETURN(o.ep_sizes, ParseList(flags.ep));
  o.tokens_per_rank = flags.tokens_per_rank;
  o.dispatch_dtype = flags.dispatch_dtype;
  o.combine_dtype = flags.combine_dtype;
  o.expert_dtype = flags.expert_dtype;
  o.routing_skew = flags.routing_skew;
  o.mode = flags.mode;
  o.ll_intranode = flags.ll_intranode;
  if (!flags.load.empty()) {
    MOEX_ASSIGN_OR_RETURN(o.load, ReadLoadRow(flags.load));
  }
  return plan::ModelPerf(arch, o);
}

nlohmann::json PerfToJson(const plan::PerfReport& r) {
  nlohmann::json j = {{"cluster", r.cluster}, {"mode", r.mode}, {"tokens_per_rank", r.tokens_per_rank}, {"moe_layers", r.moe_layers},
                      {"hidden", r.hidden}, {"experts", r.experts}, {"top_k", r.top_k},
                      {"expert_width", r.expert_width}, {"shared_width", r.shared_width}, {"notes", r.notes}};
  j["ep_sizes"] = nlohmann::json::array();
  for (const plan::EpPerf& p : r.ep) {
    j["ep_sizes"].push_back({{"ep", p.ep}, {"nodes", p.nodes}, {"experts_per_rank", p.experts_per_rank},
                             {"ranks_per_token", p.ranks_per_token}, {"nodes_per_token", p.nodes_per_token},
                             {"rank_imbalance", p.rank_imbalance},
                             {"dispatch_bytes_per_rank", p.dispatch_bytes_per_rank},
                             {"dispatch_network_bytes_per_rank", p.dispatch_network_bytes_per_rank},
                             {"dispatch_nvlink_bytes_per_rank", p.dispatch_nvlink_bytes_per_rank},
                             {"combine_bytes_per_rank", p.combine_bytes_per_rank},
                             {"dispatch_us", p.dispatch_us}, {"combine_us", p.combine_us},
                             {"expert_us", p.expert_us}, {"layer_us", p.layer_us},
                             {"dispatch_gbps", p.dispatch_gbps}, {"combine_gbps", p.combine_gbps},
                             {"deepep_dispatch_bytes_per_rank", p.deepep_dispatch_bytes_per_rank},
                             {"deepep_combine_bytes_per_rank", p.deepep_combine_bytes_per_rank},
                             {"deepep_dispatch_gbps", p.deepep_dispatch_gbps},
                             {"deepep_combine_gbps", p.deepep_combine_gbps},
                             {"expert_tflops", p.expert_tflops}, {"expert_bound", p.expert_bound},
                             {"comm_fraction", p.comm_fraction}});
    if (r.mode == "low-latency") {
      j["ep_sizes"].back().update({{"ll_messages_per_rank", p.ll_messages_per_rank},
                                   {"ll_hot_network_messages", p.ll_hot_network_messages},
                                   {"ll_hot_nvlink_messages", p.ll_hot_nvlink_messages},
                                   {"ll_dispatch_message_bytes", p.ll_dispatch_message_bytes},
                                   {"ll_combine_message_bytes", p.ll_combine_message_bytes},
                                   {"ll_sync_us", p.ll_sync_us},
                                   {"ll_buffer_bytes_per_rank", p.ll_buffer_bytes_per_rank}});
    }
  }
  if (r.mode == "low-latency") j["ll_intranode"] = r.ll_intranode;
  return j;
}

std::string PerfToTable(const plan::PerfReport& r) {
  const bool ll = r.mode == "low-latency";
  std::string out = absl::StrFormat(
      "\nperformance of one MoE layer on %s%s (%d tokens per rank; hidden %d, %d experts, top-%d, width %d%s):\n",
      r.cluster, ll ? StrCat(", low-latency mode, same-node over ", r.ll_intranode) : "", r.tokens_per_rank,
      r.hidden, r.experts, r.top_k, r.expert_width, r.shared_width > 0 ? absl::StrFormat(", shared %d", r.shared_width) : "");
  out += absl::StrFormat("%6s %5s %8s %8s %9s %12s %11s %11s %11s %11s %7s\n", "EP", "nodes", "ranks/t", "nodes/t",
                         "imbalance", "dispatch/rk", "dispatch", "experts", "combine", "layer", "comm");
  for (const plan::EpPerf& p : r.ep) {
    out += absl::StrFormat("%6d %5d %8.2f %8.2f %9.2f %12s %8.1f us %8.1f us %8.1f us %8.1f us %6.0f%%\n", p.ep,
                           p.nodes, p.ranks_per_token, p.nodes_per_token, p.rank_imbalance,
                           FormatBytes(p.dispatch_bytes_per_rank), p.dispatch_us, p.expert_us, p.combine_us,
                           p.layer_us, 100 * p.comm_fraction);
  }
  if (ll) {
    // What DeepEP's low-latency table prints (tests/test_low_latency.py's
    // bytes over the time), and the path's own counts.
    out += absl::StrFormat("%6s %10s %10s %10s %14s %14s %12s\n", "EP", "msgs/rank", "hot NIC", "hot NVLink",
                           "dispatch GB/s", "combine GB/s", "buffer/rank");
    for (const plan::EpPerf& p : r.ep) {
      out += absl::StrFormat("%6d %10.0f %10.1f %10.1f %14.1f %14.1f %12s\n", p.ep, p.ll_messages_per_rank,
                             p.ll_hot_network_messages, p.ll_hot_nvlink_messages, p.deepep_dispatch_gbps,
                             p.deepep_combine_gbps, FormatBytes(p.ll_buffer_bytes_per_rank));
    }
  }
  for (const std::string& note : r.notes) out += "note: " + note + "\n";
  return out;
}

}  // namespace

int RunPlan(const PlanFlags& flags, std::ostream& out, std::ostream& err) {
  if (flags.list) return ListPresets(out, err);
  auto fail = [&err](const absl::Status& status) {
    err << "moex plan: error: " << status.message() << "\n";
    return 1;
  };
  // A bad --dtype is reported before the model is read.
  if (!flags.dtype.empty()) {
    if (absl::Status parsed = plan::ParseWeightDtype(flags.dtype).status(); !parsed.ok()) return fail(parsed);
  }
  absl::StatusOr<std::string> resolved = model::ResolveModel(flags.model);
  if (!resolved.ok()) return fail(resolved.status());
  absl::StatusOr<model::ModelArch> arch = model::LoadModel(*resolved);
  if (!arch.ok()) return fail(arch.status());
  absl::StatusOr<plan::DtypeChoice> dtype = plan::ChooseDtype(flags.dtype, *arch);
  if (!dtype.ok()) return fail(dtype.status());
  plan::PlanOptions options;
  options.dtype = dtype->dtype;
  options.dtype_source = dtype->source;
  options.dtype_detail = dtype->detail;
  options.context = flags.context;
  options.gpus = flags.gpus;
  options.gpus_per_node = flags.gpus_per_node;
  options.gpu_mem_gib = flags.gpu_mem_gib;

  absl::StatusOr<plan::Plan> plan = plan::MakePlan(*arch, options);
  if (!plan.ok()) return fail(plan.status());
  plan->notes.insert(plan->notes.end(), dtype->notes.begin(), dtype->notes.end());
  std::optional<plan::PerfReport> perf;
  if (flags.perf) {
    absl::StatusOr<plan::PerfReport> made = Perf(flags, *arch);
    if (!made.ok()) return fail(made.status());
    perf = std::move(*made);
  }
  if (flags.json) {
    nlohmann::json j = plan::PlanToJson(*plan);
    if (perf) j["perf"] = PerfToJson(*perf);
    j["provenance"] = ProvenanceJson();
    out << j.dump(2) << "\n";
  } else {
    out << plan::PlanToTable(*plan);
    if (perf) out << PerfToTable(*perf);
  }
  return 0;
}

}  // namespace moex::cli
