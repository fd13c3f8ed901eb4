#include "moex/control/spec_validation.h"

#include <cmath>

#include "moex/bench/report.h"
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

// A bench job: its lists, each point's fields, and steps = its points.
absl::Status ValidateBench(moex::v1::JobSpec* spec) {
  moex::v1::BenchSpec* b = spec->mutable_bench();
  auto list = [](const auto& field, std::vector<int64_t> fallback) {
    return field.empty() ? fallback : std::vector<int64_t>(field.begin(), field.end());
  };
  bench::SweepSpec sweep;
  sweep.scaling = "grid";
  sweep.tokens_per_rank = list(b->tokens_per_rank(), sweep.tokens_per_rank);
  sweep.hidden = list(b->hidden(), sweep.hidden);
  sweep.top_k = list(b->top_k(), sweep.top_k);
  sweep.experts = list(b->experts(), sweep.experts);
  sweep.expert_width = list(b->expert_width(), sweep.expert_width);
  if (!b->skew().empty()) sweep.skew.assign(b->skew().begin(), b->skew().end());
  for (double skew : sweep.skew) {
    if (!std::isfinite(skew)) return Bad("bench.skew", "must be finite");
  }
  if (b->warmup() < 0 || b->warmup() > 100) return Bad("bench.warmup", "must be in [0, 100] (0: 2)");
  if (b->reps() < 0 || b->reps() > 10000) return Bad("bench.reps", "must be in [0, 10000] (0: 10)");
  if (b->warmup() == 0) b->set_warmup(2);
  if (b->reps() == 0) b->set_reps(10);
  absl::StatusOr<std::vector<bench::BenchPoint>> points = bench::ExpandSweep(sweep, spec->world_size(), spec->transport());
  if (!points.ok()) return Bad("bench", std::string(points.status().message()));
  if (points->size() > 256) return Bad("bench", StrCat("has ", points->size(), " points; at most 256 per job"));
  // Write the defaults back, so that the ranks and `moex job status` see
  // exactly what runs.
  auto store = [](auto* field, const auto& values) {
    field->Clear();
    for (auto v : values) field->Add(v);
  };
  store(b->mutable_tokens_per_rank(), sweep.tokens_per_rank);
  store(b->mutable_hidden(), sweep.hidden);
  store(b->mutable_top_k(), sweep.top_k);
  store(b->mutable_experts(), sweep.experts);
  store(b->mutable_expert_width(), sweep.expert_width);
  store(b->mutable_skew(), sweep.skew);
  spec->set_steps(static_cast<int32_t>(points->size()));
  if (spec->model().empty()) spec->set_model("bench");
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAndNormalise(moex::v1::JobSpec* spec, const SpecLimits& limits) {
  if (!SafeName(spec->name())) return Bad("name", "must be 1-64 characters of [A-Za-z0-9._-]");
  if (spec->world_size() < 1 || spec->world_size() > limits.max_world_size) {
    return Bad("world_size", StrCat("is ", spec->world_size(), "; this controller allows 1 to ", limits.max_world_size));
  }
  if (!spec->has_bench() && (spec->steps() < 1 || spec->steps() > 100000)) return Bad("steps", StrCat("is ", spec->steps(), "; allowed 1 to 100000"));
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
  if (spec->max_restarts() < 0 || spec->max_restarts() > 10) return Bad("max_restarts", "must be in [0, 10]");
  if (spec->allow_shrink() && spec->max_restarts() == 0) return Bad("allow_shrink", "needs max_restarts >= 1");
  if (spec->has_bench() && spec->max_restarts() > 0) return Bad("max_restarts", "applies to layer jobs, not bench jobs");
  if (spec->has_bench()) {
    if (spec->rebalance().threshold() != 0) return Bad("rebalance.threshold", "applies to layer jobs, not bench jobs");
    return ValidateBench(spec);
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
  if (!spec->weights().empty()) {
    if (spec->weights().size() > 4096 || spec->weights().find('\0') != std::string::npos) {
      return Bad("weights", "must be a path of at most 4096 bytes");
    }
    absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(spec->weights());
    if (!checkpoint.ok()) return Bad("weights", StrCat("cannot be read: ", checkpoint.status().message()));
    const std::string router = ep::WeightNamesFor(*moe).router;
    absl::StatusOr<model::TensorInfo> info = checkpoint->Info(router);
    if (!info.ok()) return Bad("weights", StrCat("'", spec->weights(), "' has no '", router, "': not this model's layer"));
    const std::vector<int64_t> expected = {moe->num_experts, moe->hidden};
    if (info->shape != expected) {
      return Bad("weights", StrCat("'", spec->weights(), "' holds '", router, "' of shape ", ShapeString(info->shape),
                                   ", not ", ShapeString(expected), ": not this model's layer"));
    }
  }
  if (rebalance->threshold() > 0 && (moe->num_experts + spec->redundant_experts()) % spec->world_size() != 0) {
    return Bad("rebalance.threshold", StrCat("needs the expert slots (", moe->num_experts + spec->redundant_experts(),
                                             ") to divide evenly over world_size ", spec->world_size(),
                                             "; change redundant_experts"));
  }
  return absl::OkStatus();
}

}  // namespace moex::control
