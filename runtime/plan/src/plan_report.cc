#include "moex/plan/plan_report.h"

#include <cmath>

#include "moex/core/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "moex/core/format.h"
#include "moex/model/moe_layer_spec.h"

namespace moex::plan {

using model::Part;

namespace {

nlohmann::json DeploymentToJson(const Deployment& d) {
  nlohmann::json j;
  j["gpus"] = d.gpus;
  j["gpus_per_node"] = d.gpus_per_node;
  j["nodes"] = d.nodes;
  j["gpu_mem_bytes"] = d.gpu_mem_bytes;
  j["experts_per_gpu"] = d.max_experts_per_gpu;
  j["experts_per_gpu_min"] = d.min_experts_per_gpu;
  j["experts_divide_evenly"] = d.experts_divide_evenly;
  j["replicated_weight_bytes_per_gpu"] = d.replicated_bytes;
  j["expert_weight_bytes_per_gpu"] = d.expert_bytes_per_gpu;
  j["weight_bytes_per_gpu"] = d.weight_bytes_per_gpu;
  j["fits"] = d.fits;
  j["headroom_bytes_per_gpu"] = d.headroom_bytes;
  j["kv_cache_tokens_per_gpu"] = d.kv_cache_tokens_per_gpu;
  j["fewest_gpus"] = d.fewest_gpus ? nlohmann::json(*d.fewest_gpus) : nlohmann::json(nullptr);
  j["fewest_gpus_whole_nodes"] =
      d.fewest_gpus_whole_nodes ? nlohmann::json(*d.fewest_gpus_whole_nodes) : nlohmann::json(nullptr);
  if (!d.why_no_fit.empty()) j["why_no_fit"] = d.why_no_fit;
  return j;
}

std::string Percent(double part, double whole) {
  return whole > 0 ? absl::StrFormat("%5.1f%%", 100.0 * part / whole) : "    -";
}

}  // namespace

nlohmann::json PlanToJson(const Plan& plan) {
  const model::ParamCount& p = plan.params;
  const model::ModelArch& a = plan.arch;
  nlohmann::json j;
  j["model"] = a.source;
  j["model_type"] = a.model_type;
  j["total_params"] = p.total;
  j["active_params"] = p.active;
  j["active_params_excl_embedding"] = p.active_excl_embedding;
  j["activation_ratio"] = plan.activation_ratio;
  nlohmann::json breakdown = nlohmann::json::object();
  for (int i = 0; i < model::kNumParts; ++i) {
    breakdown[std::string(model::PartName(static_cast<Part>(i)))] = {
        {"total", p.parts[i].total}, {"active", p.parts[i].active}};
  }
  j["breakdown"] = breakdown;
  j["mtp"] = {{"layers", a.mtp_layers.size()}, {"total", p.mtp.total}, {"active", p.mtp.active},
              {"weight_bytes", plan.mtp_weight_bytes}};
  j["layers"] = a.layers.size();
  j["moe_layers"] = a.num_moe_layers();
  j["dense_layers"] = a.num_dense_layers();
  j["moe_layer_list"] = model::MoeLayerList(a);
  // Whether `moex run` runs this model's MoE layers, and if not why.
  const absl::StatusOr<model::MoeLayerSpec> runnable = model::MoeLayerSpec::FromArch(a, std::nullopt);
  j["run"] = {{"supported", runnable.ok()},
              {"reason", runnable.ok() ? "" : std::string(runnable.status().message())}};
  model::MoeShape moe = a.first_moe();
  j["routed_experts_per_layer"] = moe.num_experts;
  j["experts_per_token"] = moe.experts_per_token;
  j["expert_intermediate_size"] = moe.expert_intermediate_size;
  j["hidden_size"] = a.hidden_size;
  j["vocab_size"] = a.vocab_size;
  j["router"] = {{"scoring", a.router.scoring},
                 {"norm_topk_prob", a.router.norm_topk_prob},
                 {"num_groups", a.router.num_groups},
                 {"topk_groups", a.router.topk_groups},
                 {"routed_scaling_factor", a.router.routed_scaling_factor},
                 {"correction_bias", a.router.has_correction_bias}};
  j["context"] = plan.options.context;
  j["flops_per_token"] = plan.flops_per_token;
  j["flops_per_token_breakdown"] = {{"linear", plan.linear_flops_per_token},
                                    {"attention", plan.attention_flops_per_token},
                                    {"ssm_scan", plan.scan_flops_per_token}};
  j["dtype"] = std::string(WeightDtypeName(plan.scheme.dtype));
  j["dtype_source"] = plan.options.dtype_source;
  j["dtype_format"] = plan.scheme.format;
  nlohmann::json quantised = nlohmann::json::array();
  for (Part part : plan.scheme.quantised) quantised.push_back(std::string(model::PartName(part)));
  j["quantised_parts"] = quantised;
  j["weight_bytes"] = plan.weight_bytes;
  nlohmann::json part_bytes = nlohmann::json::object();
  for (int i = 0; i < model::kNumParts; ++i) {
    part_bytes[std::string(model::PartName(static_cast<Part>(i)))] = plan.part_bytes[i];
  }
  j["weight_bytes_breakdown"] = part_bytes;
  j["kv_cache_bytes_per_token"] = plan.kv_cache_bytes_per_token;
  if (plan.deployment) j["deployment"] = DeploymentToJson(*plan.deployment);
  j["assumptions"] = a.assumptions;
  j["uncounted"] = a.uncounted;
  j["notes"] = plan.notes;
  return j;
}

std::string PlanToTable(const Plan& plan) {
  const model::ParamCount& p = plan.params;
  const model::ModelArch& a = plan.arch;
  std::string out;
  auto line = [&out](const std::string& text) { StrAppend(&out, text, "\n"); };
  const absl::StatusOr<model::MoeLayerSpec> runnable = model::MoeLayerSpec::FromArch(a, std::nullopt);
  model::MoeShape moe = a.first_moe();

  line(StrCat("model        ", a.source, " (", a.model_type, ")"));
  const PlanOptions& o = plan.options;
  line(StrCat("dtype        ", WeightDtypeName(plan.scheme.dtype), " (",
              o.dtype_source == "default" ? "default" : StrCat("from ", o.dtype_source),
              o.dtype_detail.empty() ? "" : StrCat(": ", o.dtype_detail), ")"));
  line(absl::StrFormat("layers       %d: %d MoE, %d dense%s", a.layers.size(), a.num_moe_layers(),
                       a.num_dense_layers(),
                       a.mtp_layers.empty() ? "" : absl::StrFormat(", plus %d MTP", a.mtp_layers.size())));
  if (a.num_moe_layers() > 0) line(StrCat("MoE layers   ", model::MoeLayerList(a)));
  line(StrCat("moex run     ", runnable.ok() ? StrCat("yes (layer ", runnable->layer, " by default; --layer picks another)")
                                             : StrCat("no: ", runnable.status().message())));
  if (moe.num_experts > 0) {
    line(absl::StrFormat("experts      %d routed per MoE layer, %d per token, width %d; router %s%s",
                         moe.num_experts, moe.experts_per_token, moe.expert_intermediate_size,
                         a.router.scoring,
                         a.router.num_groups > 1
                             ? absl::StrFormat(" (top-%d of %d groups)", a.router.topk_groups,
                                               a.router.num_groups)
                             : ""));
  }
  line("");
  line(absl::StrFormat("%-16s %12s %7s %12s %7s", "parameters", "total", "", "active", ""));
  for (int i = 0; i < model::kNumParts; ++i) {
    if (p.parts[i].total == 0) continue;
    line(absl::StrFormat("  %-14s %12s %7s %12s %7s", model::PartName(static_cast<Part>(i)),
                         FormatCount(static_cast<double>(p.parts[i].total)),
                         Percent(static_cast<double>(p.parts[i].total), static_cast<double>(p.total)),
                         FormatCount(static_cast<double>(p.parts[i].active)),
                         Percent(static_cast<double>(p.parts[i].active), static_cast<double>(p.active))));
  }
  line(absl::StrFormat("  %-14s %12s %7s %12s %7s", "TOTAL", FormatCount(static_cast<double>(p.total)),
                       "", FormatCount(static_cast<double>(p.active)),
                       absl::StrFormat("%5.2f%%", 100.0 * plan.activation_ratio)));
  line(absl::StrFormat("  %-14s %12s %7s %12s", "active w/o emb", "", "",
                       FormatCount(static_cast<double>(p.active_excl_embedding))));
  if (p.mtp.total > 0) {
    line(absl::StrFormat("  %-14s %12s %7s %12s   (not in TOTAL)", "MTP modules",
                         FormatCount(static_cast<double>(p.mtp.total)), "",
                         FormatCount(static_cast<double>(p.mtp.active))));
  }
  line("");
  line(absl::StrFormat("compute      %s per token at context %d (linear %s, attention %s%s)",
                       FormatFlops(plan.flops_per_token), plan.options.context,
                       FormatFlops(plan.linear_flops_per_token),
                       FormatFlops(plan.attention_flops_per_token),
                       plan.scan_flops_per_token > 0
                           ? StrCat(", scan ", FormatFlops(plan.scan_flops_per_token))
                           : ""));
  line(absl::StrFormat("weights      %s at %s (%s)", FormatBytes(plan.weight_bytes),
                       WeightDtypeName(plan.scheme.dtype), plan.scheme.format));
  if (plan.kv_cache_bytes_per_token > 0) {
    line(absl::StrFormat("KV cache     %s per token (bf16, all layers)",
                         FormatBytes(plan.kv_cache_bytes_per_token)));
  }
  if (plan.deployment) {
    const Deployment& d = *plan.deployment;
    line("");
    line(absl::StrFormat("deployment   %d GPU%s of %s on %d node%s (%d GPUs per node); experts "
                         "partitioned, the rest replicated",
                         d.gpus, d.gpus == 1 ? "" : "s", FormatBytes(d.gpu_mem_bytes), d.nodes,
                         d.nodes == 1 ? "" : "s", d.gpus_per_node));
    if (moe.num_experts > 0) {
      line(absl::StrFormat("  experts/GPU  %d per MoE layer%s", d.max_experts_per_gpu,
                           d.experts_divide_evenly
                               ? ""
                               : absl::StrFormat(" on the fullest GPU (%d on the emptiest: uneven)",
                                                 d.min_experts_per_gpu)));
    }
    line(absl::StrFormat("  per GPU      %s = %s replicated + %s experts",
                         FormatBytes(d.weight_bytes_per_gpu), FormatBytes(d.replicated_bytes),
                         FormatBytes(d.expert_bytes_per_gpu)));
    if (d.fits) {
      line(absl::StrFormat("  fits         yes, %s headroom per GPU for KV cache and activations%s",
                           FormatBytes(d.headroom_bytes),
                           d.kv_cache_tokens_per_gpu > 0
                               ? absl::StrFormat(" (about %.0f tokens of KV cache)", d.kv_cache_tokens_per_gpu)
                               : ""));
    } else {
      line(absl::StrFormat("  fits         NO: short by %s per GPU", FormatBytes(-d.headroom_bytes)));
    }
    if (d.fewest_gpus) {
      line(absl::StrFormat("  fewest GPUs  %d (%d in whole nodes of %d)", *d.fewest_gpus,
                           *d.fewest_gpus_whole_nodes, d.gpus_per_node));
    } else {
      line(StrCat("  fewest GPUs  none: ", d.why_no_fit));
    }
  }
  for (const std::string& note : plan.notes) line(StrCat("note: ", note));
  for (const std::string& assumed : a.assumptions) line(StrCat("assumed: ", assumed));
  for (const std::string& missing : a.uncounted) line(StrCat("NOT COUNTED: ", missing));
  return out;
}

}  // namespace moex::plan
