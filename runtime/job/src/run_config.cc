#include "moex/job/run_config.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "moex/core/status_macros.h"
#include "moex/core/stored_matrix.h"
#include "moex/core/echo.h"
#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "moex/placement/policy.h"

namespace moex::job {
namespace {

// A field as each front end spells it.
struct Field {
  std::string_view flag;  // moex run
  std::string_view spec;  // JobSpec
};
constexpr Field kModel{"--model", "spec.model"};
constexpr Field kLayer{"--layer", "spec.layer"};
constexpr Field kWeights{"--weights", "spec.weights"};
constexpr Field kWeightDtype{"--weight-dtype", "spec.weight_dtype"};
constexpr Field kTokens{"--tokens-per-rank", "spec.tokens_per_rank"};
constexpr Field kSteps{"--steps", "spec.steps"};
constexpr Field kTransport{"--transport", "spec.transport"};
constexpr Field kDevice{"--device", "spec.device"};
constexpr Field kDispatch{"--dispatch", "spec.dispatch"};
constexpr Field kDispatchDtype{"--dispatch-dtype", "spec.dispatch_dtype"};
constexpr Field kSkew{"--routing-skew", "spec.routing_skew"};
constexpr Field kRedundant{"--redundant-experts", "spec.redundant_experts"};
constexpr Field kTimeout{"--timeout", "spec.exchange_timeout_seconds"};
constexpr Field kPolicy{"--rebalance-policy", "spec.rebalance.policy"};
constexpr Field kThreshold{"--rebalance-threshold", "spec.rebalance.threshold"};
constexpr Field kInterval{"--rebalance-interval", "spec.rebalance.interval"};
constexpr Field kWindow{"--rebalance-window", "spec.rebalance.window"};
constexpr Field kAtStep{"--rebalance-at-step", "spec.rebalance.at_step"};
constexpr Field kChunk{"--migration-chunk-mb", "spec.rebalance.migration_chunk_mb"};
constexpr Field kWorld{"ranks", "spec.world_size"};

class Checker {
 public:
  explicit Checker(FieldNames names) : names_(names) {}
  std::string_view Name(const Field& f) const { return names_ == FieldNames::kFlags ? f.flag : f.spec; }
  absl::Status Bad(const Field& f, std::string_view why) const {
    return absl::InvalidArgumentError(StrCat(Name(f), " ", why));
  }
  template <typename T>
  absl::Status InRange(const Field& f, T value, T low, T high) const {
    if constexpr (std::is_floating_point_v<T>) {
      if (!std::isfinite(value)) return Bad(f, "must be a finite number");
    }
    if (value < low || value > high) return Bad(f, StrCat("is ", value, "; allowed ", low, " to ", high));
    return absl::OkStatus();
  }

 private:
  FieldNames names_;
};

bool OneOf(std::string_view value, const std::vector<std::string_view>& known) {
  return std::find(known.begin(), known.end(), value) != known.end();
}

bool SafePath(const std::string& path) { return path.size() <= 4096 && path.find('\0') == std::string::npos; }

}  // namespace

int64_t RebalanceConfig::chunk_bytes() const {
  return static_cast<int64_t>(std::max(1.0, migration_chunk_mb * (1 << 20)));
}

absl::Status RunConfig::Validate(FieldNames names) const {
  const Checker c(names);
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kSteps, steps, 1, 1000000));
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kTokens, tokens_per_rank, 0, int64_t{1} << 24));
  MOEX_RETURN_IF_ERROR(c.InRange(kSkew, routing_skew, 0.0, 10.0));
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kRedundant, redundant_experts, 0, 4096));
  if (!std::isfinite(timeout_seconds) || !(timeout_seconds > 0) || timeout_seconds > 3600) {
    return c.Bad(kTimeout, StrCat("is ", timeout_seconds, "; allowed above 0 to 3600 seconds"));
  }
  if (model.empty() || !SafePath(model)) return c.Bad(kModel, "must name a preset or a config.json path");
  if (!SafePath(weights)) return c.Bad(kWeights, "must be a path of at most 4096 bytes");
  if (!ParseWeightFormat(weight_dtype).ok()) {
    return c.Bad(kWeightDtype, StrCat("is '", Echo(weight_dtype), "'; known: f32, bf16, f16, fp8, mxfp4"));
  }
  if (layer && *layer < 0) return c.Bad(kLayer, StrCat("is ", *layer, "; must be >= 0"));
  if (!OneOf(device, {"cpu", "cuda"})) return c.Bad(kDevice, StrCat("'", Echo(device), "' is not one of cpu, cuda"));
  if (!OneOf(transport, {"mpi", "ucx", "nccl"})) {
    return c.Bad(kTransport, StrCat("is '", Echo(transport), "'; known: mpi, ucx, nccl"));
  }
  if ((device == "cuda") != (transport == "nccl")) {
    return device == "cuda"
               ? c.Bad(kDevice, StrCat("cuda moves tokens over NCCL: add ", c.Name(kTransport), " nccl"))
               : c.Bad(kTransport, StrCat("nccl carries device buffers: add ", c.Name(kDevice), " cuda"));
  }
  if (!OneOf(dispatch, {"auto", "flat", "hierarchical"})) {
    return c.Bad(kDispatch, StrCat("is '", Echo(dispatch), "'; known: auto, flat, hierarchical"));
  }
  if (!OneOf(dispatch_dtype, {"fp32", "fp8"})) {
    return c.Bad(kDispatchDtype, StrCat("is '", Echo(dispatch_dtype), "'; known: fp32, fp8"));
  }
  if (device == "cuda" && dispatch_dtype != "fp32") {
    return absl::UnimplementedError(StrCat(c.Name(kDispatchDtype), " ", Echo(dispatch_dtype),
                                           " is on the CPU path only: the GPU path moves bf16 rows over NCCL; "
                                           "drop it or use cpu"));
  }
  const RebalanceConfig& r = rebalance;
  if (!placement::CanonicalPolicy(r.policy).ok()) {
    return c.Bad(kPolicy, StrCat("is '", Echo(r.policy), "'; known: ", placement::kPolicyNames));
  }
  if (!std::isfinite(r.threshold) || (r.threshold != 0 && r.threshold < 1) || r.threshold > 1000) {
    return c.Bad(kThreshold, "must be 0 (only on request) or in [1, 1000]");
  }
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kInterval, r.interval, 1, 100000));
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kWindow, r.window, 1, 10000));
  MOEX_RETURN_IF_ERROR(c.InRange<int64_t>(kAtStep, r.at_step, -1, 1000000));
  if (!std::isfinite(r.migration_chunk_mb) || !(r.migration_chunk_mb > 0) || r.migration_chunk_mb > 65536) {
    return c.Bad(kChunk, "must be above 0 and at most 65536");
  }
  if (device == "cuda" && r.requested()) {
    return absl::UnimplementedError("live rebalancing is not on the GPU path yet: drop the rebalance options or use cpu");
  }
  return absl::OkStatus();
}

absl::StatusOr<model::MoeLayerSpec> RunConfig::ValidateLayer(int world_size, FieldNames names) const {
  MOEX_RETURN_IF_ERROR(Validate(names));
  const Checker c(names);
  absl::StatusOr<model::ModelArch> arch = model::LoadModel(model);
  if (!arch.ok()) {
    if (names == FieldNames::kFlags) return arch.status();
    return c.Bad(kModel, StrCat("cannot be read: ", arch.status().message()));
  }
  absl::StatusOr<model::MoeLayerSpec> spec = model::MoeLayerSpec::FromArch(*arch, layer);
  if (!spec.ok()) {
    if (names == FieldNames::kFlags) return spec.status();
    return c.Bad(layer ? kLayer : kModel, std::string(spec.status().message()));
  }
  const int64_t slots = spec->num_experts + redundant_experts;
  if (world_size < 1 || slots < world_size) {
    return absl::InvalidArgumentError(
        StrCat(names == FieldNames::kJobSpec ? StrCat(c.Name(kWorld), " is ", world_size, ": ") : "", "cannot fill ",
               world_size, " ranks: there are only ", slots, " expert slots (", spec->num_experts, " experts + ",
               redundant_experts, " redundant); run at most ", slots, " ranks or add ", c.Name(kRedundant)));
  }
  if (rebalance.threshold > 0 && slots % world_size != 0) {
    return c.Bad(kThreshold, StrCat("needs the expert slots to divide evenly over the ranks: ", spec->num_experts,
                                    " experts + ", redundant_experts, " replicas = ", slots, " slots over ",
                                    world_size, " ranks; change ", c.Name(kRedundant)));
  }
  if (!weights.empty()) {
    absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(weights);
    if (!checkpoint.ok()) return c.Bad(kWeights, StrCat("cannot be read: ", checkpoint.status().message()));
    const std::string router = model::WeightNamesFor(*spec, &*checkpoint).router;
    absl::StatusOr<model::TensorInfo> info = checkpoint->Info(router);
    if (!info.ok()) return c.Bad(kWeights, StrCat("'", weights, "' has no '", router, "': not this model's layer"));
    const std::vector<int64_t> expected = {spec->num_experts, spec->hidden};
    if (info->shape != expected) {
      return c.Bad(kWeights, StrCat("'", weights, "' holds '", router, "' of shape ", ShapeString(info->shape),
                                    ", not ", ShapeString(expected), ": not this model's layer"));
    }
  }
  return spec;
}

double CheckBound(const RunConfig& config) { return config.device == "cuda" ? 3e-2 : 1e-4; }

}  // namespace moex::job
