#include "moex/cluster/spec_validation.h"

#include <cmath>

#include "absl/strings/match.h"

#include "moex/job/bench_sweep.h"
#include "moex/cluster/client_files.h"
#include "moex/cluster/job_spec.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/stored_matrix.h"
#include "moex/core/echo.h"
#include "moex/core/str_cat.h"
#include "moex/job/run_config.h"
#include "moex/launcher/hostfile.h"
#include "moex/model/presets.h"
#include "moex/model/safetensors.h"
#include "moex/placement/policy.h"

namespace moex::cluster {
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
  job::SweepSpec sweep;
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
  absl::StatusOr<std::vector<job::BenchPoint>> points = job::ExpandSweep(sweep, spec->world_size(), spec->transport());
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

// The ranks' experts in the checkpoint's dtype (replicas included) against
// the memory of the one host they all run on. Messages quote no file
// content (client_files.h): the dtype is named only as moex calls it.
absl::Status CheckLocalMemory(const moex::v1::JobSpec& spec, const model::MoeLayerSpec& layer, int64_t available) {
  absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(spec.weights());
  if (!checkpoint.ok()) return Bad("weights", "cannot be read as a checkpoint (it changed while being checked?)");
  absl::StatusOr<WeightFormat> format =
      checkpoint->MatrixFormat(model::WeightNamesFor(layer, &*checkpoint).FormatTensor(layer.mlp.gated()));
  if (!format.ok()) {
    return Bad("weights", "holds its experts in a dtype moex cannot hold (F32, BF16, F16, F8_E4M3 with block scales, MXFP4)");
  }
  auto matrix = [&](int64_t rows, int64_t cols) {
    return StoredMatrix::ValueBytes(*format, rows, cols) + StoredMatrix::ScaleBytes(*format, rows, cols);
  };
  const int64_t F = layer.expert_width, H = layer.hidden;
  const int64_t expert = (layer.mlp.gated() ? 2 : 1) * matrix(F, H) + matrix(H, F) +
                         (layer.mlp.biases ? 4 * (2 * F + H) : 0);
  // Mapped (the default), replicas share the page cache's one copy.
  const int64_t slots = layer.num_experts + (spec.copy_weights() ? spec.redundant_experts() : 0);
  const int64_t need = slots * expert;
  if (need <= available) return absl::OkStatus();
  return Bad("weights", StrCat("the layer's ", slots, " expert slots need ", FormatBytes(static_cast<double>(need)),
                               " held in ", WeightFormatName(*format), "; the ", spec.world_size(),
                               " ranks run on this controller's host, which has ", FormatBytes(static_cast<double>(available)),
                               " available (MemAvailable): spread them over hosts (moex serve --hostfile, or "
                               "--launcher slurm) or use a checkpoint in a smaller dtype; nothing was launched"));
}

}  // namespace

absl::Status ValidateAndNormalise(moex::v1::JobSpec* spec, const SpecLimits& limits) {
  spec->DiscardUnknownFields();
  if (!SafeName(spec->name())) return Bad("name", "must be 1-64 characters of [A-Za-z0-9._-]");
  if (spec->world_size() < 1 || spec->world_size() > limits.max_world_size) {
    return Bad("world_size", StrCat("is ", spec->world_size(), "; this controller allows 1 to ", limits.max_world_size));
  }
  if (spec->max_restarts() < 0 || spec->max_restarts() > 10) return Bad("max_restarts", "must be in [0, 10]");
  if (spec->allow_shrink() && spec->max_restarts() == 0) return Bad("allow_shrink", "needs max_restarts >= 1");
  if (spec->has_bench() && spec->max_restarts() > 0) return Bad("max_restarts", "applies to layer jobs, not bench jobs");
  if (spec->has_bench()) {
    if (spec->rebalance().threshold() != 0) return Bad("rebalance.threshold", "applies to layer jobs, not bench jobs");
    if (!std::isfinite(spec->exchange_timeout_seconds()) || spec->exchange_timeout_seconds() < 0 ||
        spec->exchange_timeout_seconds() > 3600) {
      return Bad("exchange_timeout_seconds", "must be in [0, 3600] (0: 60)");
    }
  }
  // Where the ranks run: CPUs over MPI or UCX, or a GPU each over NCCL.
  if (spec->device().empty()) spec->set_device("cpu");
  if (spec->device() != "cpu" && spec->device() != "cuda") {
    return Bad("device", StrCat("is '", Echo(spec->device()), "'; known: cpu, cuda"));
  }
  const bool cuda = spec->device() == "cuda";
  if (spec->transport().empty()) spec->set_transport(cuda ? "nccl" : "mpi");
  if (cuda ? spec->transport() != "nccl" : (spec->transport() != "mpi" && spec->transport() != "ucx")) {
    return Bad("transport", StrCat("is '", Echo(spec->transport()), "'; known for device ", spec->device(), ": ",
                                   cuda ? "nccl" : "mpi, ucx"));
  }
  if (spec->ranks_per_host() < 0 || spec->ranks_per_host() > 4096) {
    return Bad("ranks_per_host", "must be in [0, 4096] (0: the launcher decides)");
  }
  if (spec->hosts_size() > 4096) return Bad("hosts", "names over 4096 hosts");
  for (int i = 0; i < spec->hosts_size(); ++i) {
    if (absl::Status name = launcher::ValidateHostName(spec->hosts(i)); !name.ok()) {
      return Bad(StrCat("hosts[", i, "]"), std::string(name.message()));
    }
    for (int j = 0; j < i; ++j) {
      if (spec->hosts(j) == spec->hosts(i)) return Bad(StrCat("hosts[", i, "]"), StrCat("repeats '", Echo(spec->hosts(i)), "'"));
    }
  }
  if (spec->has_bench()) {
    if (cuda) return Bad("device", "cuda applies to layer jobs; a bench job measures the CPU data plane");
    return ValidateBench(spec);
  }
  if (spec->dispatch().empty()) spec->set_dispatch("auto");
  if (spec->dispatch_dtype().empty()) spec->set_dispatch_dtype("fp32");
  if (spec->weight_dtype().empty()) spec->set_weight_dtype("f32");
  // Defaults written back, so that the ranks and `moex job status` see
  // exactly what runs; the bounds are RunConfig's, the same as `moex run`'s.
  const job::RunConfig defaults;
  moex::v1::RebalanceSpec* rebalance = spec->mutable_rebalance();
  if (rebalance->policy().empty()) rebalance->set_policy(defaults.rebalance.policy);
  // Records keep the policy's current name ("moex" was the refined policy's).
  if (absl::StatusOr<std::string> policy = placement::CanonicalPolicy(rebalance->policy()); policy.ok()) {
    rebalance->set_policy(*policy);
  }
  if (rebalance->interval() == 0) rebalance->set_interval(static_cast<int32_t>(defaults.rebalance.interval));
  if (rebalance->window() == 0) rebalance->set_window(static_cast<int32_t>(defaults.rebalance.window));
  // Unset (a client that left it out) is `moex run`'s default, not a run of
  // no tokens that would "succeed" at 0 tokens/s.
  if (spec->tokens_per_rank() == 0) spec->set_tokens_per_rank(static_cast<int32_t>(defaults.tokens_per_rank));
  if (spec->exchange_timeout_seconds() < 0) return Bad("exchange_timeout_seconds", "must be in [0, 3600] (0: 60)");
  job::RunConfig config = RunConfigFromSpec(*spec);
  MOEX_RETURN_IF_ERROR(config.Validate(job::FieldNames::kJobSpec));
  // Files are read here for a client, with the controller's rights: under
  // the data roots only, and no error quotes their content (client_files.h).
  // The runtime readers, whose messages do, see only files already checked.
  const bool model_file = !model::FindPreset(spec->model()).has_value();
  if (model_file) {
    MOEX_ASSIGN_OR_RETURN(std::string path, CheckModelFile(spec->model(), limits.data_roots));
    spec->set_model(path);
    config.model = path;
  }
  config.weights.clear();  // checked below, against the layer
  absl::StatusOr<model::MoeLayerSpec> layer = config.ValidateLayer(spec->world_size(), job::FieldNames::kJobSpec);
  if (!layer.ok()) {
    // Only if the file changed since it was checked.
    if (model_file && absl::StartsWith(layer.status().message(), "spec.model cannot be read")) {
      return Bad("model", StrCat("'", Echo(spec->model()), "' cannot be read as a model config"));
    }
    return layer.status();
  }
  if (!spec->weights().empty()) {
    MOEX_ASSIGN_OR_RETURN(std::string path, CheckWeightsFiles(spec->weights(), limits.data_roots, *layer));
    spec->set_weights(path);
    if (limits.local_memory_bytes >= 0) MOEX_RETURN_IF_ERROR(CheckLocalMemory(*spec, *layer, limits.local_memory_bytes));
  }
  return absl::OkStatus();
}

}  // namespace moex::cluster
