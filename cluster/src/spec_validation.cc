#include "moex/control/spec_validation.h"

#include <cmath>

#include "moex/core/str_cat.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"

namespace moex::control {
namespace {

absl::Status Bad(std::string_view field, std::string_view why) {
  return absl::InvalidArgumentError(StrCat("spec.", field, " ", why));
}

bool SafeName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateAndNormalise(moex::v1::JobSpec* spec, const SpecLimits& limits) {
  if (!SafeName(spec->name())) return Bad("name", "must be 1-64 characters of [A-Za-z0-9._-]");
  if (spec->world_size() < 1 || spec->world_size() > limits.max_world_size) {
    return Bad("world_size", StrCat("is ", spec->world_size(), "; this controller allows 1 to ", limits.max_world_size));
  }
  if (spec->steps() < 1 || spec->steps() > 100000) return Bad("steps", StrCat("is ", spec->steps(), "; allowed 1 to 100000"));
  if (spec->tokens_per_rank() < 0 || spec->tokens_per_rank() > (1 << 20)) {
    return Bad("tokens_per_rank", StrCat("is ", spec->tokens_per_rank(), "; allowed 0 to 1048576"));
  }
  if (spec->transport().empty()) spec->set_transport("mpi");
  if (spec->transport() != "mpi" && spec->transport() != "ucx") {
    return Bad("transport", StrCat("is '", spec->transport(), "'; known: mpi, ucx"));
  }
  if (!std::isfinite(spec->routing_skew()) || spec->routing_skew() < 0 || spec->routing_skew() > 10) {
    return Bad("routing_skew", "must be in [0, 10]");
  }
  if (spec->redundant_experts() < 0 || spec->redundant_experts() > 4096) {
    return Bad("redundant_experts", "must be in [0, 4096]");
  }
  if (!std::isfinite(spec->exchange_timeout_seconds()) || spec->exchange_timeout_seconds() < 0 ||
      spec->exchange_timeout_seconds() > 3600) {
    return Bad("exchange_timeout_seconds", "must be in [0, 3600] (0: 60)");
  }
  moex::v1::RebalanceSpec* rebalance = spec->mutable_rebalance();
  if (rebalance->policy().empty()) rebalance->set_policy("moex");
  if (rebalance->policy() != "moex" && rebalance->policy() != "eplb") {
    return Bad("rebalance.policy", StrCat("is '", rebalance->policy(), "'; known: moex, eplb"));
  }
  if (!std::isfinite(rebalance->threshold()) || (rebalance->threshold() != 0 && rebalance->threshold() < 1) ||
      rebalance->threshold() > 1000) {
    return Bad("rebalance.threshold", "must be 0 (only on request) or in [1, 1000]");
  }
  if (rebalance->interval() == 0) rebalance->set_interval(10);
  if (rebalance->window() == 0) rebalance->set_window(4);
  if (rebalance->interval() < 1 || rebalance->interval() > 100000) return Bad("rebalance.interval", "must be in [1, 100000] (0: 10)");
  if (rebalance->window() < 1 || rebalance->window() > 10000) return Bad("rebalance.window", "must be in [1, 10000] (0: 4)");
  if (spec->model().empty() || spec->model().size() > 4096 || spec->model().find('\0') != std::string::npos) {
    return Bad("model", "must name a preset or a config.json path");
  }
  absl::StatusOr<model::ModelArch> arch = model::LoadModel(spec->model());
  if (!arch.ok()) return Bad("model", StrCat("cannot be read: ", arch.status().message()));
  std::optional<int64_t> layer;
  if (spec->has_layer()) layer = spec->layer();
  absl::StatusOr<ep::MoeLayerSpec> moe = ep::MoeLayerSpec::FromArch(*arch, layer);
  if (!moe.ok()) return Bad(spec->has_layer() ? "layer" : "model", std::string(moe.status().message()));
  if (moe->num_experts + spec->redundant_experts() < spec->world_size()) {
    return Bad("world_size", StrCat("is ", spec->world_size(), " but the layer has only ",
                                    moe->num_experts + spec->redundant_experts(),
                                    " expert slots (experts + redundant_experts)"));
  }
  if (rebalance->threshold() > 0 && (moe->num_experts + spec->redundant_experts()) % spec->world_size() != 0) {
    return Bad("rebalance.threshold", StrCat("needs the expert slots (", moe->num_experts + spec->redundant_experts(),
                                             ") to divide evenly over world_size ", spec->world_size(),
                                             "; change redundant_experts"));
  }
  return absl::OkStatus();
}

}  // namespace moex::control
