#include "moex/run/runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <span>

#include "fault_hooks.h"
#include "memory_check.h"
#include "moex/balance/live_rebalancer.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/gpu_layer.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/tokens.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "moex/run/run_weights.h"

namespace moex::run {
namespace {

using Clock = std::chrono::steady_clock;

// A synthetic token's vocabulary id: uniform over [0, vocab), from the seed
// and the token's global index (every rank draws any token's alike).
int64_t SyntheticTokenId(uint64_t seed, int64_t global_index, int64_t vocab) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (static_cast<uint64_t>(global_index) + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<int64_t>(z % static_cast<uint64_t>(vocab));
}

// This rank's tokens for each step: a slice of --input (every step the
// same), or synthetic ones that follow the routing skew. Hash-routed layers
// also take the tokens' ids: --input's `input_ids`, or synthetic ones.
class TokenSource {
 public:
  absl::Status Open(const job::RunConfig& config, const model::MoeLayerSpec& spec, int world, int rank) {
    config_ = &config;
    spec_ = &spec;
    world_ = world;
    rank_ = rank;
    if (config.input.empty()) {
      total_ = config.tokens_per_rank * world;
      return absl::OkStatus();
    }
    MOEX_ASSIGN_OR_RETURN(model::Checkpoint file, model::Checkpoint::Open(config.input));
    MOEX_ASSIGN_OR_RETURN(model::TensorInfo info, file.Info("hidden_states"));
    if (info.shape.size() != 2 || info.shape[1] != spec.hidden) {
      return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor 'hidden_states' has shape ",
                                               ShapeString(info.shape), ", the layer needs [tokens, ",
                                               spec.hidden, "]"));
    }
    MOEX_ASSIGN_OR_RETURN(Tensor all, file.Read("hidden_states"));
    total_ = info.shape[0];
    auto [first, count] = ep::TokenSlice(total_, world, rank);
    input_ = Tensor({count, spec.hidden});
    std::copy(all.values.begin() + first * spec.hidden, all.values.begin() + (first + count) * spec.hidden,
              input_.values.begin());
    input_first_ = first;
    if (spec.hash_routed) {
      if (!file.Has("input_ids")) {
        return absl::InvalidArgumentError(StrCat(
            "'", info.file, "' has no tensor 'input_ids': layer ", spec.layer, " of ", spec.model_type,
            " is hash-routed (its experts come from the token-id table by each token's id), so --input must "
            "carry input_ids [", total_, "] (I64) beside hidden_states; or run a scored layer with --layer"));
      }
      MOEX_ASSIGN_OR_RETURN(all_ids_, file.ReadIntegers("input_ids", {total_}));
      for (int64_t t = 0; t < total_; ++t) {
        if (all_ids_[t] < 0 || all_ids_[t] >= spec.vocab_size) {
          return absl::InvalidArgumentError(StrCat("'", info.file, "': input_ids[", t, "] is ", all_ids_[t],
                                                   ", outside the vocabulary [0, ", spec.vocab_size, ")"));
        }
      }
    }
    return absl::OkStatus();
  }
  int64_t tokens_per_step() const { return total_; }
  // Every token's id in step `step` (hash-routed layers; empty otherwise).
  std::vector<int64_t> AllIds(int64_t step) const {
    if (!spec_->hash_routed || !config_->input.empty()) return all_ids_;
    std::vector<int64_t> ids(total_);
    for (int64_t t = 0; t < total_; ++t) ids[t] = SyntheticTokenId(config_->seed, step * total_ + t, spec_->vocab_size);
    return ids;
  }
  // Rows per rank, in rank order (the reference routes in the same slices).
  std::vector<int64_t> Slices() const {
    std::vector<int64_t> out;
    for (int r = 0; r < world_; ++r) out.push_back(ep::TokenSlice(total_, world_, r).second);
    return out;
  }
  void Make(int64_t step, const Tensor& router, Tensor* x, std::vector<int64_t>* ids, int64_t* first) const {
    auto [slice_first, count] = ep::TokenSlice(total_, world_, rank_);
    ids->clear();
    if (!config_->input.empty()) {
      *x = input_;
      *first = input_first_;
      if (spec_->hash_routed) ids->assign(all_ids_.begin() + slice_first, all_ids_.begin() + slice_first + count);
      return;
    }
    *first = step * total_ + slice_first;
    *x = ep::SyntheticTokens(*spec_, router, config_->seed, config_->routing_skew, *first, count);
    if (spec_->hash_routed) {
      for (int64_t t = 0; t < count; ++t) ids->push_back(SyntheticTokenId(config_->seed, *first + t, spec_->vocab_size));
    }
  }

 private:
  const job::RunConfig* config_ = nullptr;
  const model::MoeLayerSpec* spec_ = nullptr;
  int world_ = 1, rank_ = 0;
  int64_t total_ = 0;
  Tensor input_;
  int64_t input_first_ = 0;
  std::vector<int64_t> all_ids_;  // --input's input_ids, hash-routed layers
};

std::vector<int64_t> EveryExpert(const model::MoeLayerSpec& spec) {
  std::vector<int64_t> every(spec.num_experts);
  for (int64_t e = 0; e < spec.num_experts; ++e) every[e] = e;
  return every;
}

class Runner {
 public:
  Runner(const job::RunConfig& config, transport::Transport& t, std::span<RunSink* const> sinks,
         ControllerLink* controller)
      : config_(config), t_(t), rank_(t.rank()), world_(t.world_size()), sinks_(sinks), controller_(controller) {}

  // A failure that names ranks (the transport's MissingRanks) says where
  // they are, by host: a host that is lost shows as every rank of it.
  absl::Status WithWhereLostRanksAre(absl::Status status) const {
    const std::vector<int> missing = transport::MissingRanks(status);
    if (missing.empty() || layer_ == nullptr) return status;
    const std::string where = layer_->WhereRanksAre(missing);
    if (where.empty()) return status;
    absl::Status out(status.code(), StrCat(status.message(), " [", where, "]"));
    status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
    return out;
  }

  absl::Status Run() {
    MOEX_ASSIGN_OR_RETURN(spec_, config_.ValidateLayer(world_, controller_ != nullptr ? job::FieldNames::kJobSpec
                                                                                    : job::FieldNames::kFlags));
    MOEX_ASSIGN_OR_RETURN(model::ModelArch arch, model::LoadModel(config_.model));
    MOEX_ASSIGN_OR_RETURN(placement::Placement start, StartPlacement());
    if (!config_.weights.empty()) {
      MOEX_ASSIGN_OR_RETURN(checkpoint_, model::Checkpoint::Open(config_.weights));
    }
    std::vector<int64_t> mine;
    for (int64_t s = 0; s < start.num_local_slots(rank_); ++s) mine.push_back(start.slot_expert(start.first_slot(rank_) + s));
    ep::WeightLoadOptions options{.map_checkpoint = config_.map_weights};
    MOEX_ASSIGN_OR_RETURN(options.random_format, ParseWeightFormat(config_.weight_dtype));
    MOEX_ASSIGN_OR_RETURN(const WeightFormat format, ep::ExpertFormatOf(spec_, checkpoint(), options));
    {
      std::vector<int64_t> distinct = mine;
      std::sort(distinct.begin(), distinct.end());
      distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
      int64_t cached = 0;
      if (!config_.weight_cache.empty()) {
        if (absl::StatusOr<ep::WeightCache> cache = ep::WeightCache::Open(config_.weight_cache); cache.ok()) {
          cached = ep::CountCachedExperts(spec_, checkpoint(), config_.seed, distinct, format, *cache);
        }
      }
      // Tokens a rank holds: --input's share (from its header), else --tokens-per-rank.
      int64_t tokens_per_rank = config_.tokens_per_rank;
      if (!config_.input.empty()) {
        absl::StatusOr<model::Checkpoint> input = model::Checkpoint::Open(config_.input);
        absl::StatusOr<model::TensorInfo> info =
            input.ok() ? input->Info("hidden_states") : absl::StatusOr<model::TensorInfo>(input.status());
        if (info.ok() && !info->shape.empty()) tokens_per_rank = (info->shape[0] + world_ - 1) / world_;
      }
      const MemoryNeed need = EstimateNeed(spec_, static_cast<int64_t>(distinct.size()), cached,
                                           !config_.weight_cache.empty(), format,
                                           options.map_checkpoint && ep::ExpertsUsedInPlace(spec_, checkpoint()),
                                           tokens_per_rank,
                                           world_, rank_ == 0 && (config_.check || config_.check_every_step));
      MOEX_RETURN_IF_ERROR(CheckMemoryFits(spec_, need, format, t_, NextDeadline()));
    }
    weights_.emplace(spec_, checkpoint(), config_.seed, config_.weight_cache, rank_, options);
    MOEX_ASSIGN_OR_RETURN(ep::MoeWeights weights, weights_->Load(mine, t_, config_.timeout_seconds));
    router_ = weights.router;
    MOEX_RETURN_IF_ERROR(MakeLayer(start, std::move(weights)));
    MOEX_RETURN_IF_ERROR(tokens_.Open(config_, spec_, world_, rank_));
    if (!config_.save_weights.empty() && rank_ == 0) MOEX_RETURN_IF_ERROR(SaveAllWeights());
    MOEX_RETURN_IF_ERROR(StartRebalancer());

    // A relaunched attempt resumes after the steps done before it (at least
    // its last step runs, so that the output and the check have one).
    const int64_t first_step = std::clamp<int64_t>(config_.first_step, 0, config_.steps - 1);
    RunHeader header{.config = &config_, .spec = &spec_, .placement = &start, .model_source = arch.source,
                     .transport = std::string(t_.name()), .device_path = gpu() ? layer_->DataPathReason() : "",
                     .weights_line = weights_->line(), .data_path_reason = gpu() ? "" : layer_->DataPathReason(),
                     .world_size = world_,
                     .tokens_per_step = tokens_.tokens_per_step(), .first_step = first_step,
                     .rebalancing = rebalancer_.has_value(),
                     .blas = gpu() ? kernels::BlasBinding{} : kernels::CurrentBlasBinding()};
    for (RunSink* sink : sinks_) sink->OnStart(header);

    Tensor x, y;
    std::vector<int64_t> ids;
    int64_t first = 0;
    for (int64_t step = first_step; step < config_.steps; ++step) {
      MOEX_RETURN_IF_ERROR(CheckCancelled(step));
      MaybeStallBeforeStep(rank_, step, config_.timeout_seconds);
      tokens_.Make(step, router_, &x, &ids, &first);
      if (rebalancer_) {
        MOEX_RETURN_IF_ERROR(rebalancer_->BeginStep(t_, *layer_, step, Published(), NextDeadline()));
        TellRebalances(step);
      }
      MOEX_RETURN_IF_ERROR(t_.Barrier(NextDeadline()));
      ep::StepStats stats;
      const auto begin = Clock::now();
      MOEX_RETURN_IF_ERROR(layer_->Forward(t_, x, ids, first, NextDeadline(), &y, &stats));
      const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
      MOEX_ASSIGN_OR_RETURN(StepSummary summary, Summarise(t_, *layer_, stats, seconds, step, NextDeadline()));
      if (rebalancer_) {
        summary.placement_version = rebalancer_->version();
        if (const balance::Migration* m = rebalancer_->migration()) {
          summary.migration = StrCat("migrating to v", m->version(), ": chunk ", m->chunks_done() + 1, "/", m->num_chunks());
        }
        MOEX_RETURN_IF_ERROR(rebalancer_->EndStep(t_, *layer_, step, summary.tokens_per_expert, NextDeadline()));
      }
      if (config_.check_every_step) MOEX_RETURN_IF_ERROR(CheckStep(x, y, step, &summary));
      steps_.push_back(std::move(summary));
      const RunProgress progress = Progress(step + 1, /*final=*/false);
      for (RunSink* sink : sinks_) sink->OnStep(steps_.back(), progress);
      if (rebalancer_) TellRebalances(step);
    }
    // Before --check: the other ranks do not wait on rank 0's reference,
    // and the figure is the layer's own.
    MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> peak_resident, PeakResidentPerRank());
    if (!config_.output.empty() || config_.check) MOEX_RETURN_IF_ERROR(Finish(x, y, config_.steps - 1));
    // A controller job's cache is for a relaunch: every step ran.
    if (controller_ != nullptr) weights_->DropHostCache();
    RunResult result{.data_path = layer_->DataPath(), .hosts = layer_->NumHosts(), .progress = Progress(config_.steps, /*final=*/true),
                     .rebalances = rebalancer_ ? rebalancer_->events() : std::vector<balance::RebalanceEvent>{},
                     .expert_dtype = std::string(WeightFormatName(format)),
                     .experts_mapped = checkpoint() != nullptr && options.map_checkpoint,
                     .expert_bytes_per_rank = weights_->expert_bytes_per_rank(),
                     .peak_resident_bytes_per_rank = std::move(peak_resident)};
    for (RunSink* sink : sinks_) MOEX_RETURN_IF_ERROR(sink->OnFinish(result));
    return absl::OkStatus();
  }

 private:
  bool gpu() const { return config_.device == "cuda"; }
  Deadline NextDeadline() const { return Deadline::InSeconds(config_.timeout_seconds); }
  const model::Checkpoint* checkpoint() const { return checkpoint_ ? &*checkpoint_ : nullptr; }

  // A controller job runs the placement the controller publishes; `moex
  // run` the contiguous one.
  absl::StatusOr<placement::Placement> StartPlacement() {
    if (controller_ == nullptr) {
      return placement::Placement::Contiguous(spec_.num_experts, world_, config_.redundant_experts);
    }
    MOEX_ASSIGN_OR_RETURN(placement::Placement published, controller_->StartPlacement());
    if (published.num_experts() != spec_.num_experts || published.world_size() != world_) {
      return absl::FailedPreconditionError(StrCat("the controller's placement (version ", published.version(),
                                                  ") is for ", published.num_experts(), " experts on ",
                                                  published.world_size(), " ranks; this job has ", spec_.num_experts,
                                                  " on ", world_));
    }
    return published;
  }

  // The CPU layer holds the experts in fp32; the GPU layer uploads them and
  // keeps no host copy.
  absl::Status MakeLayer(const placement::Placement& start, ep::MoeWeights weights) {
    if (gpu()) {
      // Collective: NCCL's unique id goes from rank 0 to every rank.
      MOEX_ASSIGN_OR_RETURN(layer_, ep::LoadGpuLayer({.spec = &spec_, .placement = &start, .weights = &weights,
                                                      .rank = rank_, .host = &t_, .deadline = NextDeadline()}));
      return absl::OkStatus();
    }
    MOEX_ASSIGN_OR_RETURN(const ep::DispatchDtype dtype, ep::ParseDispatchDtype(config_.dispatch_dtype));
    MOEX_ASSIGN_OR_RETURN(ep::MoeLayer layer, ep::MoeLayer::Create(spec_, start, std::move(weights), t_, NextDeadline(),
                                                                          config_.dispatch, dtype));
    layer_ = std::make_unique<ep::MoeLayer>(std::move(layer));
    return absl::OkStatus();
  }

  // Live rebalancing runs when asked for and in every controller job (the
  // controller may publish placements).
  absl::Status StartRebalancer() {
    const bool asked = config_.rebalance.requested();
    if (!asked && controller_ == nullptr) return absl::OkStatus();
    const job::RebalanceConfig& r = config_.rebalance;
    balance::RebalanceOptions options{
        .policy = r.policy,
        .threshold = r.threshold,
        .interval = r.interval,
        .window = r.window,
        .at_step = r.at_step,
        .chunk_bytes = r.chunk_bytes(),
        .before_chunk = [this](int64_t chunk) { MaybeFailMigration(rank_, chunk, config_.timeout_seconds); },
        .on_received = [this](int64_t expert, const ep::ExpertWeights& w) { weights_->CacheReceived(expert, w); },
        .initial_version = layer_->placement().version()};
    absl::StatusOr<balance::LiveRebalancer> rebalancer = balance::LiveRebalancer::Create(options, *layer_, world_);
    if (!rebalancer.ok() || gpu()) {
      if (asked) return rebalancer.ok() ? absl::UnimplementedError("live rebalancing is not on the GPU path yet") : rebalancer.status();
      // A job whose slots do not divide over its ranks keeps its placement.
      if (rank_ == 0) {
        WarnOnRank(rank_, StrCat("live rebalancing is off: ",
                                 rebalancer.ok() ? "not on the GPU path yet" : rebalancer.status().message()));
      }
      return absl::OkStatus();
    }
    rebalancer_.emplace(std::move(*rebalancer));
    return absl::OkStatus();
  }

  std::optional<placement::Placement> Published() {
    if (controller_ == nullptr || rank_ != 0) return std::nullopt;
    return controller_->PublishedAfter(rebalancer_->version());
  }

  // The controller's cancel reaches ranks at different times; the ranks
  // agree on it before a step, so that all stop at the same boundary.
  absl::Status CheckCancelled(int64_t step) {
    if (controller_ == nullptr) return absl::OkStatus();
    std::vector<int64_t> flag = {controller_->cancelled() ? 1 : 0};
    MOEX_RETURN_IF_ERROR(t_.AllReduceSum(std::span<int64_t>(flag), NextDeadline()));
    if (flag[0] > 0) return absl::CancelledError(StrCat("the job was cancelled; stopped before step ", step + 1));
    return absl::OkStatus();
  }

  // Tells the sinks of placement changes decided or gone live since the
  // last call.
  void TellRebalances(int64_t step) {
    const std::vector<balance::RebalanceEvent>& events = rebalancer_->events();
    if (events.size() > events_started_) {
      for (RunSink* sink : sinks_) sink->OnRebalance(step, events.back(), /*live=*/false);
      events_started_ = events.size();
    }
    if (!events.empty() && events.back().live_step >= 0 && events_live_ < events.size()) {
      for (RunSink* sink : sinks_) sink->OnRebalance(step, events.back(), /*live=*/true);
      events_live_ = events.size();
    }
  }

  RunProgress Progress(int64_t steps_done, bool final) const {
    return {.steps_done = steps_done, .steps = &steps_,
            .placement_version = rebalancer_ ? rebalancer_->version() : layer_->placement().version(),
            .check_error = check_error_, .experts_from_cache = weights_->experts_from_cache(),
            .experts_loaded = weights_->experts_loaded(), .final = final};
  }

  // Each rank's peak resident set (VmHWM: anonymous and mapped file pages
  // it touched), by rank.
  absl::StatusOr<std::vector<int64_t>> PeakResidentPerRank() {
    std::vector<double> all(world_);
    const double mine[] = {static_cast<double>(PeakResidentBytes())};
    MOEX_RETURN_IF_ERROR(t_.AllGather(std::span<const double>(mine), std::span<double>(all), NextDeadline()));
    return std::vector<int64_t>(all.begin(), all.end());
  }

  absl::Status SaveAllWeights() const {
    MOEX_ASSIGN_OR_RETURN(ep::MoeWeights all, ep::LoadMoeWeights(spec_, checkpoint(), config_.seed, EveryExpert(spec_),
                                                                  nullptr, nullptr, weights_->options()));
    return ep::SaveMoeWeights(spec_, all, config_.save_weights, model::StorageDtype::kF32);
  }

  // Gathers the last step's tokens and outputs on rank 0; writes --output
  // and runs --check there.
  absl::Status Finish(const Tensor& x, const Tensor& y, int64_t step) {
    MOEX_ASSIGN_OR_RETURN(Tensor all_y, ep::GatherRows(t_, y, spec_.hidden, NextDeadline()));
    MOEX_ASSIGN_OR_RETURN(Tensor all_x, ep::GatherRows(t_, x, spec_.hidden, NextDeadline()));
    if (rank_ != 0) return absl::OkStatus();
    if (!config_.output.empty()) {
      MOEX_RETURN_IF_ERROR(model::WriteSafetensors(config_.output, {{"output", &all_y}}));
      for (RunSink* sink : sinks_) sink->OnOutputWritten(config_.output, all_y.shape);
    }
    if (!config_.check) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(check_error_, CompareWithReference(all_x, all_y, step));
    const double bound = job::CheckBound(config_);
    for (RunSink* sink : sinks_) sink->OnCheck(check_error_, bound);
    if (check_error_ > bound) {
      return absl::InternalError(StrCat("--check failed: relative error ", check_error_, " > ", bound));
    }
    return absl::OkStatus();
  }

  // --check-every-step: this step's every token against the reference.
  absl::Status CheckStep(const Tensor& x, const Tensor& y, int64_t step, StepSummary* summary) {
    MOEX_ASSIGN_OR_RETURN(Tensor all_y, ep::GatherRows(t_, y, spec_.hidden, NextDeadline()));
    MOEX_ASSIGN_OR_RETURN(Tensor all_x, ep::GatherRows(t_, x, spec_.hidden, NextDeadline()));
    if (rank_ != 0) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(summary->check_error, CompareWithReference(all_x, all_y, step));
    const double bound = job::CheckBound(config_);
    if (summary->check_error > bound) {
      return absl::InternalError(StrCat("--check-every-step failed at step ", summary->step + 1, " (placement v",
                                        summary->placement_version, "): relative error ", summary->check_error,
                                        " > ", bound));
    }
    return absl::OkStatus();
  }

  // Rank 0: max |error| of `all_y` against the single-process computation
  // of `all_x`, relative to the output's scale.
  absl::StatusOr<double> CompareWithReference(const Tensor& all_x, const Tensor& all_y, int64_t step) {
    if (!reference_weights_) {
      MOEX_ASSIGN_OR_RETURN(reference_weights_, ep::LoadMoeWeights(spec_, checkpoint(), config_.seed, EveryExpert(spec_),
                                                                   nullptr, nullptr, weights_->options()));
    }
    MOEX_ASSIGN_OR_RETURN(const ep::DispatchDtype dtype, ep::ParseDispatchDtype(config_.dispatch_dtype));
    MOEX_ASSIGN_OR_RETURN(const Tensor expected, ep::ReferenceForward(spec_, *reference_weights_, all_x,
                                                                      tokens_.AllIds(step), tokens_.Slices(), dtype));
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < expected.size(); ++i) {
      scale = std::max(scale, std::fabs(double{expected.values[i]}));
      worst = std::max(worst, std::fabs(double{expected.values[i]} - all_y.values[i]));
    }
    return scale > 0 ? worst / scale : worst;
  }

  const job::RunConfig& config_;
  transport::Transport& t_;
  const int rank_, world_;
  std::span<RunSink* const> sinks_;
  ControllerLink* controller_;
  model::MoeLayerSpec spec_;
  std::optional<model::Checkpoint> checkpoint_;
  std::optional<RunWeights> weights_;  // refers to checkpoint_
  std::unique_ptr<ep::Layer> layer_;
  Tensor router_;  // synthetic tokens follow it
  TokenSource tokens_;
  std::optional<balance::LiveRebalancer> rebalancer_;
  size_t events_started_ = 0, events_live_ = 0;
  std::vector<StepSummary> steps_;
  double check_error_ = -1;
  std::optional<ep::MoeWeights> reference_weights_;
};

}  // namespace

absl::Status RunLayer(const job::RunConfig& config, transport::Transport& transport, std::span<RunSink* const> sinks,
                      ControllerLink* controller) {
  Runner runner(config, transport, sinks, controller);
  return runner.WithWhereLostRanksAre(runner.Run());
}

}  // namespace moex::run
