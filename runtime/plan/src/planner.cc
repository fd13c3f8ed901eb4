#include "moex/plan/planner.h"

#include <algorithm>
#include <cmath>

#include "moex/core/str_cat.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"

namespace moex::plan {

using model::FfnKind;
using model::LayerSpec;
using model::MixerKind;
using model::ModelArch;
using model::Part;

absl::Status PlanOptions::Validate() const {
  if (context < 1 || context > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(StrCat("--context ", context, " is outside [1, 2^30]"));
  }
  if (gpus && (*gpus < 1 || *gpus > (1 << 20))) {
    return absl::InvalidArgumentError(StrCat("--gpus ", *gpus, " is outside [1, 1048576]"));
  }
  if (gpus_per_node < 1 || gpus_per_node > 1024) {
    return absl::InvalidArgumentError(
        StrCat("--gpus-per-node ", gpus_per_node, " is outside [1, 1024]"));
  }
  if (!(gpu_mem_gib > 0) || gpu_mem_gib > 1e6) {
    return absl::InvalidArgumentError(
        StrCat("--gpu-mem-gib ", gpu_mem_gib, " is outside (0, 1e6]"));
  }
  return absl::OkStatus();
}

namespace {

double BytesPerParam(const DtypeScheme& scheme, Part part) {
  return scheme.bytes_per_param[static_cast<int>(part)];
}

// Weight bytes of the routed experts on the fullest GPU when each MoE layer's
// experts are spread over `gpus` GPUs.
double ExpertBytesPerGpu(const ModelArch& arch, const DtypeScheme& scheme, int64_t gpus) {
  double bytes = 0;
  for (const LayerSpec& layer : arch.layers) {
    if (layer.ffn != FfnKind::kMoe) continue;
    int64_t per_gpu = (layer.moe.num_experts + gpus - 1) / gpus;
    bytes += static_cast<double>(per_gpu * layer.moe.params_per_expert) *
             BytesPerParam(scheme, Part::kRoutedExperts);
  }
  return bytes;
}

Deployment PlanDeployment(const Plan& plan, int64_t gpus) {
  const ModelArch& arch = plan.arch;
  const PlanOptions& options = plan.options;
  Deployment d;
  d.gpus = gpus;
  d.gpus_per_node = options.gpus_per_node;
  d.nodes = (gpus + options.gpus_per_node - 1) / options.gpus_per_node;
  d.gpu_mem_bytes = options.gpu_mem_gib * kGiB;
  d.replicated_bytes = plan.weight_bytes - plan.part_bytes[static_cast<int>(Part::kRoutedExperts)];

  int64_t max_experts = 0;
  for (const LayerSpec& layer : arch.layers) {
    if (layer.ffn != FfnKind::kMoe) continue;
    max_experts = std::max(max_experts, layer.moe.num_experts);
    int64_t most = (layer.moe.num_experts + gpus - 1) / gpus;
    int64_t least = layer.moe.num_experts / gpus;
    d.max_experts_per_gpu = std::max(d.max_experts_per_gpu, most);
    d.min_experts_per_gpu = d.min_experts_per_gpu == 0 ? least : std::min(d.min_experts_per_gpu, least);
    if (layer.moe.num_experts % gpus != 0) d.experts_divide_evenly = false;
  }
  d.expert_bytes_per_gpu = ExpertBytesPerGpu(arch, plan.scheme, gpus);
  d.weight_bytes_per_gpu = d.replicated_bytes + d.expert_bytes_per_gpu;
  d.headroom_bytes = d.gpu_mem_bytes - d.weight_bytes_per_gpu;
  d.fits = d.headroom_bytes >= 0;
  if (plan.kv_cache_bytes_per_token > 0 && d.headroom_bytes > 0) {
    d.kv_cache_tokens_per_gpu = std::floor(d.headroom_bytes / plan.kv_cache_bytes_per_token);
  }

  // ceil(E / n) stops shrinking once n reaches the largest expert count, so
  // searching up to it (or 1 for a dense model) finds the fewest GPUs.
  int64_t search_to = std::max<int64_t>(1, max_experts);
  for (int64_t n = 1; n <= search_to; ++n) {
    if (d.replicated_bytes + ExpertBytesPerGpu(arch, plan.scheme, n) <= d.gpu_mem_bytes) {
      d.fewest_gpus = n;
      d.fewest_gpus_whole_nodes =
          (n + options.gpus_per_node - 1) / options.gpus_per_node * options.gpus_per_node;
      break;
    }
  }
  if (!d.fewest_gpus) {
    if (d.replicated_bytes > d.gpu_mem_bytes) {
      d.why_no_fit = StrCat("the weights every GPU holds in expert parallelism (attention, "
                                  "dense layers, shared experts, embeddings: ",
                                  FormatBytes(d.replicated_bytes), ") exceed one GPU's ",
                                  FormatBytes(d.gpu_mem_bytes),
                                  "; this needs tensor or pipeline parallelism as well");
    } else {
      d.why_no_fit = StrCat("even one expert per GPU per layer needs ",
                                  FormatBytes(d.replicated_bytes + ExpertBytesPerGpu(arch, plan.scheme, search_to)),
                                  " per GPU, more than ", FormatBytes(d.gpu_mem_bytes));
    }
  }
  return d;
}

}  // namespace

absl::StatusOr<Plan> MakePlan(const ModelArch& arch, const PlanOptions& options) {
  MOEX_RETURN_IF_ERROR(options.Validate());
  if (arch.layers.empty()) {
    return absl::InvalidArgumentError(StrCat(arch.source, ": the model has no layers"));
  }
  Plan plan;
  plan.arch = arch;
  plan.options = options;
  plan.params = model::CountParams(arch);
  plan.scheme = SchemeFor(options.dtype);
  if (options.dtype_source == "quantization_config" && options.dtype == WeightDtype::kFp8 &&
      arch.stored.expert_dtype == "fp4") {
    // DeepSeek-V4's releases: FP8 throughout but the routed experts, FP4
    // (e2m1 two a byte, one e8m0 scale per 32 values).
    plan.scheme.bytes_per_param[static_cast<int>(Part::kRoutedExperts)] = 0.5 + 1.0 / 32.0;
    plan.scheme.format = "e4m3 with one scale per 128x128 block, routed experts fp4 (e2m1, one e8m0 scale per 32 "
                         "values: expert_dtype); the rest bf16";
  }
  const model::ParamCount& p = plan.params;
  plan.activation_ratio = p.total > 0 ? static_cast<double>(p.active) / static_cast<double>(p.total) : 0;

  // FLOPs: a multiply-add per active matmul weight (the embedding is a
  // lookup and norms are elementwise), plus attention over the context.
  double matmul_params = static_cast<double>(p.active - p.part(Part::kEmbedding).active -
                                             p.part(Part::kNorms).active);
  plan.linear_flops_per_token = 2.0 * matmul_params;
  for (const LayerSpec& layer : arch.layers) {
    if (layer.mixer == MixerKind::kAttention) {
      int64_t span = layer.attention.sliding_window > 0
                         ? std::min(options.context, layer.attention.sliding_window)
                         : options.context;
      plan.attention_flops_per_token += 2.0 * static_cast<double>(layer.attention.num_heads) *
                                        static_cast<double>(layer.attention.qk_head_dim +
                                                            layer.attention.v_head_dim) *
                                        static_cast<double>(span);
      plan.kv_cache_bytes_per_token += 2.0 * static_cast<double>(layer.attention.kv_cache_elems_per_token);
    }
    plan.scan_flops_per_token += static_cast<double>(layer.mamba_scan_flops_per_token);
  }
  plan.flops_per_token =
      plan.linear_flops_per_token + plan.attention_flops_per_token + plan.scan_flops_per_token;

  for (int i = 0; i < model::kNumParts; ++i) {
    plan.part_bytes[i] = static_cast<double>(p.parts[i].total) * plan.scheme.bytes_per_param[i];
    plan.weight_bytes += plan.part_bytes[i];
  }
  if (p.mtp.total > 0) {
    std::array<model::PartCount, model::kNumParts> mtp_parts{};
    for (const LayerSpec& layer : arch.mtp_layers) model::AddLayerParams(layer, &mtp_parts);
    mtp_parts[static_cast<int>(Part::kOther)].total += arch.mtp_extra_params;
    for (int i = 0; i < model::kNumParts; ++i) {
      plan.mtp_weight_bytes +=
          static_cast<double>(mtp_parts[i].total) * plan.scheme.bytes_per_param[i];
    }
    plan.notes.push_back(StrCat("MTP modules (", FormatCount(static_cast<double>(p.mtp.total)),
                                      " parameters, ", FormatBytes(plan.mtp_weight_bytes),
                                      ") are not in the totals; add them when serving with "
                                      "speculative decoding"));
  }
  if (arch.vision_params > 0) {
    plan.notes.push_back("the vision encoder counts in the total and is inactive for text tokens");
  }
  bool has_mamba = false;
  for (const LayerSpec& layer : arch.layers) has_mamba |= layer.mixer == MixerKind::kMamba;
  if (has_mamba) {
    plan.notes.push_back(
        "state-space layers keep a fixed-size state per sequence, not counted in the KV cache; "
        "their scan FLOPs are an estimate (6 per state element)");
  }
  if (options.gpus) plan.deployment = PlanDeployment(plan, *options.gpus);
  return plan;
}

}  // namespace moex::plan
