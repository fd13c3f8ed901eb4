#include "moex/cli/run_command.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "moex/balance/live_rebalancer.h"
#include "moex/cli/bench_command.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/gpu_layer.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/tokens.h"
#include "moex/kernels/expert_ffn.h"
#include "moex/launcher/worker_session.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport_registry.h"
#include "nlohmann/json.hpp"
#include "run_weights.h"

namespace moex::cli {

CLI::App* AddRunCommand(CLI::App& app, RunFlags& f) {
  CLI::App* run = app.add_subcommand(
      "run", "Run one MoE layer expert-parallel across the ranks of an mpirun job");
  run->add_option("--model,-m", f.model, "Preset name, a config.json, or a folder holding one")->capture_default_str();
  run->add_option("--layer", f.layer, "Layer index (default: the first MoE layer)");
  run->add_option("--weights", f.weights,
                  "A .safetensors file, a model.safetensors.index.json, or a folder (default: random from --seed)");
  run->add_option("--save-weights", f.save_weights, "Rank 0 writes the whole layer's weights here (safetensors)");
  run->add_option("--weight-cache", f.weight_cache,
                  "A directory on each host (e.g. under /dev/shm) where ranks keep the weights they load; a relaunch "
                  "reads them back and loads only what is missing");
  run->add_option("--input", f.input, "safetensors file with `hidden_states` [tokens, hidden] (fp32 or bf16)");
  run->add_option("--output", f.output, "Rank 0 writes `output` [tokens, hidden] fp32 here");
  run->add_option("--tokens-per-rank", f.tokens_per_rank, "Synthetic tokens per rank per step")->capture_default_str();
  run->add_option("--steps", f.steps, "Forward passes")->capture_default_str();
  run->add_option("--transport", f.transport,
                  "mpi, ucx, or nccl (device buffers; needs --device cuda; counts go over MPI)")->capture_default_str();
  run->add_option("--device", f.device, "cpu, or cuda: the layer on GPUs (bf16), one GPU a rank")->capture_default_str();
  run->add_option("--routing-skew", f.routing_skew, "Zipf exponent of synthetic routing (0: uniform)")->capture_default_str();
  run->add_option("--seed", f.seed, "Seed of random weights and synthetic tokens")->capture_default_str();
  run->add_option("--redundant-experts", f.redundant_experts, "Extra replicas of experts")->capture_default_str();
  run->add_flag("--check", f.check, "Compare the output of the last step with a single-process computation");
  run->add_flag("--check-every-step", f.check_every_step, "Compare every step's output (slow on big layers)");
  run->add_option("--rebalance-threshold", f.rebalance_threshold,
                  "Move experts when the window's max/mean rank load exceeds this (0: off)")->capture_default_str();
  run->add_option("--rebalance-interval", f.rebalance_interval, "At least this many steps between placement changes")->capture_default_str();
  run->add_option("--rebalance-window", f.rebalance_window, "Steps of load a decision looks at")->capture_default_str();
  run->add_option("--rebalance-policy", f.rebalance_policy, "moex or eplb")->capture_default_str();
  run->add_option("--rebalance-at-step", f.rebalance_at_step, "Also rebalance before this step (0-based)");
  run->add_option("--migration-chunk-mb", f.migration_chunk_mb, "Expert weights moved per step, all ranks together")->capture_default_str();
  run->add_option("--timeout", f.timeout_seconds, "Seconds any one exchange may wait for peers")->capture_default_str();
  run->add_option("--json", f.json, "Rank 0 writes the per-step figures and summary here");
  run->add_flag("--quiet", f.quiet, "Print only the summary");
  return run;
}

CLI::App* AddWorkerCommand(CLI::App& app, RunFlags& f) {
  CLI::App* worker = app.add_subcommand(
      "worker", "A rank of a job launched by `moex serve` (the controller starts these under mpirun)");
  worker->add_option("--job-id", f.job_id, "The job this rank belongs to")->required();
  worker->add_option("--controller", f.controller, "The controller's address")->required();
  return worker;
}

namespace {

using Clock = std::chrono::steady_clock;

// Per-rank figures of one step, gathered to every rank.
enum Field {
  kTokens, kReceived, kPairs, kRoute, kDispatch, kExperts, kCombine, kDispatchBytes, kCombineBytes,
  kRemoteCopies, kStepSeconds, kNumFields
};

struct StepSummary {
  int64_t tokens = 0;
  double seconds = 0;  // slowest rank
  double route = 0, dispatch = 0, experts = 0, combine = 0;  // slowest rank each
  int64_t bytes = 0;
  int64_t dispatch_bytes = 0;
  int64_t remote_copies = 0;
  std::vector<int64_t> load;  // routed pairs per rank
  double imbalance = 0;       // max / mean load
  std::vector<int64_t> tokens_per_expert;
  int64_t placement_version = 1;
  std::string migration;        // what the rebalancer did after this step, if anything
  double check_error = -1;      // --check-every-step: relative error of this step
};

nlohmann::json ToJson(const StepSummary& s) {
  return {{"tokens", s.tokens}, {"seconds", s.seconds}, {"route_seconds", s.route},
          {"dispatch_seconds", s.dispatch}, {"expert_seconds", s.experts},
          {"combine_seconds", s.combine}, {"bytes_sent", s.bytes},
          {"tokens_per_second", s.seconds > 0 ? s.tokens / s.seconds : 0.0},
          {"load_per_rank", s.load}, {"imbalance", s.imbalance},
          {"tokens_per_expert", s.tokens_per_expert}, {"placement_version", s.placement_version},
          {"check_relative_error", s.check_error}};
}

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// --device and --transport go together; checked before any transport or
// GPU is touched, so the message is the same on every build and machine.
absl::Status ValidateDevice(const RunFlags& flags) {
  if (flags.device != "cpu" && flags.device != "cuda") {
    return absl::InvalidArgumentError(StrCat("--device '", flags.device, "' is not one of cpu, cuda"));
  }
  if ((flags.device == "cuda") != (flags.transport == "nccl")) {
    return absl::InvalidArgumentError(flags.device == "cuda"
                                          ? "--device cuda moves tokens over NCCL: add --transport nccl"
                                          : "--transport nccl carries device buffers: add --device cuda");
  }
  if (flags.device == "cuda" && (flags.rebalance_threshold > 0 || flags.rebalance_at_step >= 0)) {
    return absl::UnimplementedError("live rebalancing is not on the GPU path yet: drop --rebalance-* or use --device cpu");
  }
  return absl::OkStatus();
}

class Runner {
 public:
  Runner(const RunFlags& flags, transport::Transport& transport, launcher::WorkerSession* session)
      : flags_(flags), t_(transport), rank_(transport.rank()), world_(transport.world_size()), session_(session) {}


  absl::Status Run() {
    MOEX_RETURN_IF_ERROR(Validate());
    MOEX_ASSIGN_OR_RETURN(model::ModelArch arch, model::LoadModel(flags_.model));
    MOEX_ASSIGN_OR_RETURN(spec_, ep::MoeLayerSpec::FromArch(arch, flags_.layer));
    MOEX_ASSIGN_OR_RETURN(ep::Placement placement, MakePlacement());
    std::optional<model::Checkpoint> checkpoint;
    if (!flags_.weights.empty()) {
      MOEX_ASSIGN_OR_RETURN(checkpoint, model::Checkpoint::Open(flags_.weights));
    }
    std::vector<int64_t> mine;
    for (int64_t s = 0; s < placement.num_local_slots(rank_); ++s) {
      mine.push_back(placement.slot_expert(placement.first_slot(rank_) + s));
    }
    run_weights_.emplace(spec_, checkpoint ? &*checkpoint : nullptr, flags_.seed, flags_.weight_cache, rank_);
    MOEX_ASSIGN_OR_RETURN(ep::MoeWeights weights, run_weights_->Load(mine, t_, NextDeadline()));
    router_ = weights.router;
    if (flags_.device == "cuda") {
      // Collective: NCCL's unique id goes from rank 0 to every rank.
      MOEX_ASSIGN_OR_RETURN(gpu_layer_, ep::LoadGpuLayer({.spec = &spec_, .placement = &placement, .weights = &weights,
                                                          .rank = rank_, .host = &t_, .deadline = NextDeadline()}));
      if (rank_ == 0 && !flags_.quiet) std::cout << "moex run: device buffers over " << gpu_layer_->Describe() << "\n";
    }
    MOEX_ASSIGN_OR_RETURN(ep::MoeLayer layer, ep::MoeLayer::Create(spec_, placement, std::move(weights), t_, NextDeadline()));
    MOEX_RETURN_IF_ERROR(LoadInput());
    if (rank_ == 0 && !flags_.quiet) {
      PrintHeader(arch, placement);
      std::cout << run_weights_->line();
    }
    if (!flags_.save_weights.empty() && rank_ == 0) MOEX_RETURN_IF_ERROR(SaveAllWeights(checkpoint));

    MOEX_RETURN_IF_ERROR(StartRebalancer(layer));
    Tensor x, y;
    int64_t first = 0;
    // A restarted attempt resumes after the steps done before it (at least
    // its last step runs, so that the output and the check have one).
    const int64_t first_step = std::clamp<int64_t>(flags_.first_step, 0, flags_.steps - 1);
    if (rank_ == 0 && first_step > 0 && !flags_.quiet) {
      std::cout << "moex run: resuming after step " << first_step << " (done by an earlier attempt)\n";
    }
    for (int64_t step = first_step; step < flags_.steps; ++step) {
      MaybeStall(step);
      MakeTokens(step, &x, &first);
      if (rebalancer_) {
        MOEX_RETURN_IF_ERROR(rebalancer_->BeginStep(t_, layer, step, PublishedPlacement(), NextDeadline()));
        ReportRebalance(step);
      }
      MOEX_RETURN_IF_ERROR(t_.Barrier(NextDeadline()));
      ep::StepStats stats;
      auto start = Clock::now();
      MOEX_RETURN_IF_ERROR(Forward(layer, x, first, &y, &stats));
      double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      MOEX_ASSIGN_OR_RETURN(StepSummary summary, Summarise(stats, seconds, layer));
      if (rebalancer_) {
        summary.placement_version = rebalancer_->version();
        if (const balance::Migration* m = rebalancer_->migration()) {
          summary.migration = StrCat("migrating to v", m->version(), ": chunk ", m->chunks_done() + 1, "/", m->num_chunks());
        }
        MOEX_RETURN_IF_ERROR(rebalancer_->EndStep(t_, layer, step, summary.tokens_per_expert, NextDeadline()));
      }
      if (flags_.check_every_step) MOEX_RETURN_IF_ERROR(CheckStep(x, y, checkpoint, &summary));
      if (rank_ == 0 && !flags_.quiet) PrintStep(step, summary);
      if (rebalancer_) ReportRebalance(step);
      steps_.push_back(std::move(summary));
      if (session_ != nullptr) ReportToController(step + 1);
    }
    if (!flags_.output.empty() || flags_.check) MOEX_RETURN_IF_ERROR(Finish(x, y, checkpoint));
    check_done_ = true;
    if (session_ != nullptr && flags_.check) ReportToController(flags_.steps);
    // A controller job's cache is for a relaunch: every step ran.
    if (session_ != nullptr) run_weights_->DropHostCache();
    dispatch_path_ = gpu() ? "NCCL all-to-all-v" : std::string(layer.dispatch_path());
    if (rank_ == 0) {
      PrintSummary();
      if (!flags_.json.empty()) MOEX_RETURN_IF_ERROR(WriteJson());
    }
    return absl::OkStatus();
  }

 private:
  bool gpu() const { return gpu_layer_ != nullptr; }

  absl::Status Forward(ep::MoeLayer& layer, const Tensor& x, int64_t first, Tensor* y, ep::StepStats* stats) {
    if (gpu_layer_) return gpu_layer_->Forward(t_, x, first, NextDeadline(), y, stats);
    return layer.Forward(t_, x, first, NextDeadline(), y, stats);
  }

  // bf16 on the GPU path: its rounding, not the CPU path's fp32 summation
  // order, bounds the error.
  double CheckBound() const { return flags_.device == "cuda" ? 3e-2 : 1e-4; }

  // A worker runs the placement the controller publishes; `moex run` makes
  // the contiguous one.
  absl::StatusOr<ep::Placement> MakePlacement() {
    if (session_ == nullptr) return ep::Placement::Contiguous(spec_.num_experts, world_, flags_.redundant_experts);
    MOEX_ASSIGN_OR_RETURN(moex::v1::Placement published, session_->FetchPlacement());
    if (published.num_experts() != spec_.num_experts ||
        published.slots_per_rank_size() != world_) {
      return absl::FailedPreconditionError(StrCat("the controller's placement (version ", published.version(), ") is for ",
                                                  published.num_experts(), " experts on ", published.slots_per_rank_size(),
                                                  " ranks; this job has ", spec_.num_experts, " on ", world_));
    }
    start_version_ = std::max<int64_t>(1, published.version());
    return ep::Placement::FromSlots(published.num_experts(),
                                    {published.slot_expert().begin(), published.slot_expert().end()},
                                    {published.slots_per_rank().begin(), published.slots_per_rank().end()});
  }

  Deadline NextDeadline() const { return Deadline::InSeconds(flags_.timeout_seconds); }

  absl::Status Validate() const {
    if (flags_.steps < 1 || flags_.steps > 1000000) return absl::InvalidArgumentError(StrCat("--steps ", flags_.steps, " is outside [1, 1000000]"));
    if (flags_.tokens_per_rank < 0 || flags_.tokens_per_rank > (1 << 24)) {
      return absl::InvalidArgumentError(StrCat("--tokens-per-rank ", flags_.tokens_per_rank, " is outside [0, 2^24]"));
    }
    if (!(flags_.timeout_seconds > 0)) return absl::InvalidArgumentError("--timeout must be positive");
    if (flags_.routing_skew < 0 || flags_.routing_skew > 10) return absl::InvalidArgumentError("--routing-skew must be in [0, 10]");
    if (flags_.redundant_experts < 0) return absl::InvalidArgumentError("--redundant-experts must be >= 0");
    return absl::OkStatus();
  }

  // Test hook for the missing-rank path: MOEX_FAULT_STALL_RANK=r makes rank r
  // go silent (alive, not answering) before step MOEX_FAULT_STALL_STEP.
  void MaybeStall(int64_t step) const {
    const char* stall_rank = std::getenv("MOEX_FAULT_STALL_RANK");
    const char* stall_step = std::getenv("MOEX_FAULT_STALL_STEP");
    if (stall_rank == nullptr || std::atoi(stall_rank) != rank_) return;
    if (stall_step != nullptr && std::atoll(stall_step) != step) return;
    if (stall_step == nullptr && step != 0) return;
    std::this_thread::sleep_for(std::chrono::duration<double>(flags_.timeout_seconds * 3 + 5));
  }

  absl::Status LoadInput() {
    if (flags_.input.empty()) {
      total_tokens_ = flags_.tokens_per_rank * world_;
      return absl::OkStatus();
    }
    MOEX_ASSIGN_OR_RETURN(model::Checkpoint file, model::Checkpoint::Open(flags_.input));
    MOEX_ASSIGN_OR_RETURN(model::TensorInfo info, file.Info("hidden_states"));
    if (info.shape.size() != 2 || info.shape[1] != spec_.hidden) {
      return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor 'hidden_states' has shape ",
                                               ShapeString(info.shape), ", the layer needs [tokens, ",
                                               spec_.hidden, "]"));
    }
    MOEX_ASSIGN_OR_RETURN(Tensor all, file.Read("hidden_states"));
    total_tokens_ = info.shape[0];
    auto [first, count] = ep::TokenSlice(total_tokens_, world_, rank_);
    input_ = Tensor({count, spec_.hidden});
    std::copy(all.values.begin() + first * spec_.hidden, all.values.begin() + (first + count) * spec_.hidden,
              input_.values.begin());
    input_first_ = first;
    return absl::OkStatus();
  }

  void MakeTokens(int64_t step, Tensor* x, int64_t* first) const {
    if (!flags_.input.empty()) {
      *x = input_;
      *first = input_first_;
      return;
    }
    auto [slice_first, count] = ep::TokenSlice(total_tokens_, world_, rank_);
    *first = step * total_tokens_ + slice_first;
    *x = ep::SyntheticTokens(spec_, router_, flags_.seed, flags_.routing_skew, *first, count);
  }

  absl::StatusOr<StepSummary> Summarise(const ep::StepStats& s, double seconds, const ep::MoeLayer& layer) {
    std::vector<double> mine(kNumFields), all(kNumFields * world_);
    mine[kTokens] = s.tokens;
    mine[kReceived] = s.received_tokens;
    mine[kPairs] = s.routed_pairs;
    mine[kRoute] = s.route_seconds;
    mine[kDispatch] = s.dispatch_seconds;
    mine[kExperts] = s.expert_seconds;
    mine[kCombine] = s.combine_seconds;
    mine[kDispatchBytes] = s.dispatch_bytes;
    mine[kCombineBytes] = s.combine_bytes;
    mine[kRemoteCopies] = s.remote_token_copies;
    mine[kStepSeconds] = seconds;
    MOEX_RETURN_IF_ERROR(t_.AllGather(mine, all, NextDeadline()));
    std::vector<int64_t> per_expert = layer.TokensPerExpert(s);
    MOEX_RETURN_IF_ERROR(t_.AllReduceSum(std::span<int64_t>(per_expert), NextDeadline()));
    StepSummary out;
    out.tokens_per_expert = std::move(per_expert);
    int64_t load_total = 0, load_max = 0;
    for (int r = 0; r < world_; ++r) {
      const double* f = &all[r * kNumFields];
      out.tokens += static_cast<int64_t>(f[kTokens]);
      out.seconds = std::max(out.seconds, f[kStepSeconds]);
      out.route = std::max(out.route, f[kRoute]);
      out.dispatch = std::max(out.dispatch, f[kDispatch]);
      out.experts = std::max(out.experts, f[kExperts]);
      out.combine = std::max(out.combine, f[kCombine]);
      out.bytes += static_cast<int64_t>(f[kDispatchBytes] + f[kCombineBytes]);
      out.dispatch_bytes += static_cast<int64_t>(f[kDispatchBytes]);
      out.remote_copies += static_cast<int64_t>(f[kRemoteCopies]);
      out.load.push_back(static_cast<int64_t>(f[kPairs]));
      load_total += out.load.back();
      load_max = std::max(load_max, out.load.back());
    }
    out.imbalance = load_total > 0 ? static_cast<double>(load_max) * world_ / static_cast<double>(load_total) : 1.0;
    return out;
  }

  absl::Status SaveAllWeights(const std::optional<model::Checkpoint>& checkpoint) const {
    std::vector<int64_t> every(spec_.num_experts);
    for (int64_t e = 0; e < spec_.num_experts; ++e) every[e] = e;
    MOEX_ASSIGN_OR_RETURN(ep::MoeWeights all, ep::LoadMoeWeights(spec_, checkpoint ? &*checkpoint : nullptr, flags_.seed, every));
    return ep::SaveMoeWeights(spec_, all, flags_.save_weights, model::StorageDtype::kF32);
  }

  // Gathers the last step's tokens and outputs on rank 0; writes --output and
  // runs --check there.
  absl::Status Finish(const Tensor& x, const Tensor& y, const std::optional<model::Checkpoint>& checkpoint) {
    MOEX_ASSIGN_OR_RETURN(Tensor all_y, ep::GatherRows(t_, y, spec_.hidden, NextDeadline()));
    MOEX_ASSIGN_OR_RETURN(Tensor all_x, ep::GatherRows(t_, x, spec_.hidden, NextDeadline()));
    if (rank_ != 0) return absl::OkStatus();
    if (!flags_.output.empty()) {
      MOEX_RETURN_IF_ERROR(model::WriteSafetensors(flags_.output, {{"output", &all_y}}));
      std::cout << "wrote " << flags_.output << ": output " << ShapeString(all_y.shape) << " fp32\n";
    }
    if (flags_.check) {
      MOEX_ASSIGN_OR_RETURN(check_error_, CompareWithReference(all_x, all_y, checkpoint));
      std::cout << absl::StrFormat("check: max |error| against a single-process computation, relative to the "
                                   "output's scale: %.3g (bound %.0e%s): %s\n",
                                   check_error_, CheckBound(), gpu() ? ", bf16" : "",
                                   check_error_ <= CheckBound() ? "PASS" : "FAIL");
      if (check_error_ > CheckBound()) {
        return absl::InternalError(StrCat("--check failed: relative error ", check_error_, " > ", CheckBound()));
      }
    }
    return absl::OkStatus();
  }

  // Rank 0: max |error| of `all_y` against the single-process computation
  // of `all_x`, relative to the output's scale.
  absl::StatusOr<double> CompareWithReference(const Tensor& all_x, const Tensor& all_y,
                                              const std::optional<model::Checkpoint>& checkpoint) {
    if (!reference_weights_) {
      std::vector<int64_t> every(spec_.num_experts);
      for (int64_t e = 0; e < spec_.num_experts; ++e) every[e] = e;
      MOEX_ASSIGN_OR_RETURN(reference_weights_, ep::LoadMoeWeights(spec_, checkpoint ? &*checkpoint : nullptr, flags_.seed, every));
    }
    std::vector<int64_t> slices;
    for (int r = 0; r < world_; ++r) slices.push_back(ep::TokenSlice(total_tokens_, world_, r).second);
    Tensor expected = ep::ReferenceForward(spec_, *reference_weights_, all_x, slices);
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < expected.size(); ++i) {
      scale = std::max(scale, std::fabs(double{expected.values[i]}));
      worst = std::max(worst, std::fabs(double{expected.values[i]} - all_y.values[i]));
    }
    return scale > 0 ? worst / scale : worst;
  }

  // --check-every-step: this step's every token against the reference.
  absl::Status CheckStep(const Tensor& x, const Tensor& y, const std::optional<model::Checkpoint>& checkpoint,
                         StepSummary* summary) {
    MOEX_ASSIGN_OR_RETURN(Tensor all_y, ep::GatherRows(t_, y, spec_.hidden, NextDeadline()));
    MOEX_ASSIGN_OR_RETURN(Tensor all_x, ep::GatherRows(t_, x, spec_.hidden, NextDeadline()));
    if (rank_ != 0) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(summary->check_error, CompareWithReference(all_x, all_y, checkpoint));
    if (summary->check_error > CheckBound()) {
      return absl::InternalError(StrCat("--check-every-step failed at step ", steps_.size() + 1, " (placement v",
                                        summary->placement_version, "): relative error ", summary->check_error, " > ", CheckBound()));
    }
    return absl::OkStatus();
  }

  // Live rebalancing runs when asked for (a threshold or a step) and in
  // every controller-launched job (the controller may publish placements).
  absl::Status StartRebalancer(const ep::MoeLayer& layer) {
    const bool asked = flags_.rebalance_threshold > 0 || flags_.rebalance_at_step >= 0;
    if (!asked && session_ == nullptr) return absl::OkStatus();
    balance::RebalanceOptions options{
        .policy = flags_.rebalance_policy,
        .threshold = flags_.rebalance_threshold,
        .interval = flags_.rebalance_interval,
        .window = flags_.rebalance_window,
        .at_step = flags_.rebalance_at_step,
        .chunk_bytes = static_cast<int64_t>(std::max(1.0, flags_.migration_chunk_mb * (1 << 20))),
        .before_chunk = [this](int64_t chunk) { MaybeStallMigration(chunk); },
        .on_received = [this](int64_t expert, const ep::ExpertWeights& weights) { run_weights_->CacheReceived(expert, weights); },
        .initial_version = start_version_};
    absl::StatusOr<balance::LiveRebalancer> rebalancer = balance::LiveRebalancer::Create(options, layer, world_);
    if (!rebalancer.ok()) {
      if (asked) return rebalancer.status();
      // A job whose slots do not divide over its ranks keeps its placement.
      if (rank_ == 0) std::cerr << "moex worker: live rebalancing is off: " << rebalancer.status().message() << "\n";
      return absl::OkStatus();
    }
    rebalancer_.emplace(std::move(*rebalancer));
    return absl::OkStatus();
  }

  // Rank 0 of a controller job: the controller's placement when it is newer
  // than the one serving.
  std::optional<balance::PublishedPlacement> PublishedPlacement() {
    if (session_ == nullptr || rank_ != 0 || session_->placement_version() <= rebalancer_->version()) return std::nullopt;
    absl::StatusOr<moex::v1::Placement> fetched = session_->FetchPlacement();
    if (!fetched.ok()) {
      std::cerr << "moex worker: rank 0: cannot fetch placement version " << session_->placement_version() << ": "
                << fetched.status().message() << "\n";
      return std::nullopt;
    }
    return balance::PublishedPlacement{
        .version = fetched->version(),
        .slot_expert = {fetched->slot_expert().begin(), fetched->slot_expert().end()},
        .slots_per_rank = {fetched->slots_per_rank().begin(), fetched->slots_per_rank().end()}};
  }

  // Rank 0 says when a placement change starts and when it goes live (also
  // with --quiet: these are rare and matter).
  void ReportRebalance(int64_t step) {
    if (rank_ != 0) return;
    const std::vector<balance::RebalanceEvent>& events = rebalancer_->events();
    if (events.size() > events_started_) {
      const balance::RebalanceEvent& e = events.back();
      std::cout << absl::StrFormat(
          "rebalance before step %d: placement v%d (%s); window imbalance %.3f -> %.3f; moving %d expert%s "
          "(%s) in %d chunk%s\n",
          step + 1, e.version, e.reason, e.imbalance_before, e.imbalance_after, e.experts_moved,
          e.experts_moved == 1 ? "" : "s",
          FormatBytes(static_cast<double>(e.experts_moved * 3 * spec_.expert_width * spec_.hidden * 4)), e.chunks,
          e.chunks == 1 ? "" : "s");
      events_started_ = events.size();
    }
    if (!events.empty() && events.back().live_step >= 0 && events_live_ < events.size()) {
      const balance::RebalanceEvent& e = events.back();
      std::cout << absl::StrFormat("placement v%d live from step %d: %s migrated in %.2f ms\n", e.version,
                                   e.live_step + 1, FormatBytes(static_cast<double>(e.bytes)), 1e3 * e.seconds);
      events_live_ = events.size();
    }
  }

  // Test hook: MOEX_FAULT_STALL_MIGRATION_RANK=r makes rank r go silent
  // before the first migration chunk.
  // MOEX_FAULT_KILL_MIGRATION_RANK=r makes rank r die (SIGKILL) there.
  void MaybeStallMigration(int64_t chunk) const {
    const char* kill_rank = std::getenv("MOEX_FAULT_KILL_MIGRATION_RANK");
    if (kill_rank != nullptr && std::atoi(kill_rank) == rank_ && chunk == 0) raise(SIGKILL);
    const char* stall_rank = std::getenv("MOEX_FAULT_STALL_MIGRATION_RANK");
    if (stall_rank == nullptr || std::atoi(stall_rank) != rank_ || chunk != 0) return;
    std::this_thread::sleep_for(std::chrono::duration<double>(flags_.timeout_seconds * 3 + 5));
  }

  void PrintHeader(const model::ModelArch& arch, const ep::Placement& placement) const {
    std::cout << absl::StrFormat(
        "moex run: %s layer %d on %d rank%s over %s: %d experts (top-%d, width %d%s), hidden %d, "
        "%d slots (%d per rank%s)\n",
        arch.source, spec_.layer, world_, world_ == 1 ? "" : "s", t_.name(), spec_.num_experts, spec_.top_k,
        spec_.expert_width, spec_.shared_width > 0 ? StrCat(", shared ", spec_.shared_width) : "", spec_.hidden,
        placement.num_slots(), placement.num_local_slots(0),
        placement.num_slots() > placement.num_experts()
            ? StrCat(", ", placement.num_slots() - placement.num_experts(), " replicas")
            : "");
    std::cout << absl::StrFormat("layer parameters: %s total, %s active per token; %d tokens per step%s\n",
                                 FormatCount(static_cast<double>(spec_.total_params())),
                                 FormatCount(static_cast<double>(spec_.active_params())), total_tokens_,
                                 flags_.input.empty() ? absl::StrFormat(" (synthetic, routing skew %.2f)", flags_.routing_skew)
                                                      : StrCat(" from ", flags_.input));
  }

  void PrintStep(int64_t step, const StepSummary& s) const {
    std::cout << absl::StrFormat(
        "step %d/%d: %d tokens in %.2f ms (route %.2f, dispatch %.2f, experts %.2f, combine %.2f), "
        "%s sent, imbalance %.2f, %.0f tokens/s%s%s%s\n",
        step + 1, flags_.steps, s.tokens, 1e3 * s.seconds, 1e3 * s.route, 1e3 * s.dispatch,
        1e3 * s.experts, 1e3 * s.combine, FormatBytes(static_cast<double>(s.bytes)), s.imbalance,
        s.seconds > 0 ? s.tokens / s.seconds : 0.0,
        rebalancer_ ? absl::StrFormat(", placement v%d", s.placement_version) : "",
        s.migration.empty() ? "" : StrCat(", ", s.migration),
        s.check_error >= 0 ? absl::StrFormat(", check %.2g", s.check_error) : "");
  }

  // Steps after the first (a warm-up) unless there is only one.
  std::vector<const StepSummary*> Measured() const {
    std::vector<const StepSummary*> out;
    for (size_t i = steps_.size() > 1 ? 1 : 0; i < steps_.size(); ++i) out.push_back(&steps_[i]);
    return out;
  }

  struct Medians {
    double rate = 0, dispatch = 0, combine = 0, imbalance = 0;
    size_t steps = 0;
  };
  Medians MeasuredMedians() const {
    std::vector<double> rate, dispatch, combine, imbalance;
    for (const StepSummary* s : Measured()) {
      rate.push_back(s->seconds > 0 ? s->tokens / s->seconds : 0);
      dispatch.push_back(s->dispatch);
      combine.push_back(s->combine);
      imbalance.push_back(s->imbalance);
    }
    return {Median(rate), Median(dispatch), Median(combine), Median(imbalance), rate.size()};
  }

  void PrintSummary() const {
    const Medians m = MeasuredMedians();
    const StepSummary& last = steps_.back();
    double minimum = static_cast<double>(last.remote_copies) * spec_.hidden * 4;
    std::cout << absl::StrFormat(
        "summary (median of %d step%s): %.0f tokens/s, dispatch %.2f ms, combine %.2f ms, "
        "imbalance %.2f; dispatch moved %s for a floor of %s (%.2fx: routing metadata) over %s\n",
        m.steps, m.steps == 1 ? "" : "s", m.rate, 1e3 * m.dispatch, 1e3 * m.combine, m.imbalance,
        FormatBytes(static_cast<double>(last.dispatch_bytes)),
        FormatBytes(minimum), minimum > 0 ? last.dispatch_bytes / minimum : 1.0, dispatch_path_);
  }

  // Rank 0 tells the controller how the job goes; every rank's heartbeat
  // says which step it is on.
  void ReportToController(int64_t steps_done) {
    session_->SetStep(steps_done);
    if (rank_ != 0) return;
    const Medians m = MeasuredMedians();
    moex::v1::JobMetrics metrics;
    metrics.set_tokens_per_second(m.rate);
    metrics.set_dispatch_seconds(m.dispatch);
    metrics.set_combine_seconds(m.combine);
    metrics.set_imbalance(m.imbalance);
    metrics.set_steps_done(steps_done);
    metrics.set_check_relative_error(check_error_);
    metrics.set_placement_version(rebalancer_ ? rebalancer_->version() : 1);
    metrics.set_experts_from_cache(run_weights_->experts_from_cache());
    metrics.set_experts_loaded(run_weights_->experts_loaded());
    const bool final = steps_done == flags_.steps && (!flags_.check || check_done_);
    absl::Status status = session_->ReportStep(steps_done, metrics, steps_.back().tokens_per_expert, final);
    if (!status.ok()) std::cerr << "moex worker: rank 0: " << status.message() << "\n";
  }

  absl::Status WriteJson() const {
    nlohmann::json j;
    j["model"] = flags_.model;
    j["layer"] = spec_.layer;
    j["world_size"] = world_;
    j["transport"] = std::string(t_.name());
    j["dispatch_path"] = dispatch_path_;
    j["tokens_per_step"] = total_tokens_;
    j["routing_skew"] = flags_.routing_skew;
    j["layer_total_params"] = spec_.total_params();
    j["layer_active_params"] = spec_.active_params();
    j["steps"] = nlohmann::json::array();
    for (const StepSummary& s : steps_) j["steps"].push_back(ToJson(s));
    const Medians m = MeasuredMedians();
    j["summary"] = {{"tokens_per_second", m.rate}, {"dispatch_seconds", m.dispatch},
                    {"combine_seconds", m.combine}, {"imbalance", m.imbalance}};
    if (flags_.check) j["check_relative_error"] = check_error_;
    j["rebalances"] = nlohmann::json::array();
    if (rebalancer_) {
      for (const balance::RebalanceEvent& e : rebalancer_->events()) {
        j["rebalances"].push_back({{"version", e.version}, {"reason", e.reason}, {"decided_before_step", e.decided_step},
                                   {"live_from_step", e.live_step}, {"window_imbalance_before", e.imbalance_before},
                                   {"window_imbalance_after", e.imbalance_after}, {"experts_moved", e.experts_moved},
                                   {"bytes", e.bytes}, {"chunks", e.chunks}, {"migration_seconds", e.seconds}});
      }
    }
    std::string temporary = StrCat(flags_.json, ".tmp");
    {
      std::ofstream out(temporary);
      out << j.dump(2) << "\n";
      if (!out) return absl::PermissionDeniedError(StrCat("cannot write '", flags_.json, "'"));
    }
    if (std::rename(temporary.c_str(), flags_.json.c_str()) != 0) {
      return absl::PermissionDeniedError(StrCat("cannot write '", flags_.json, "'"));
    }
    return absl::OkStatus();
  }

  const RunFlags& flags_;
  transport::Transport& t_;
  int rank_;
  int world_;
  ep::MoeLayerSpec spec_;
  Tensor router_;
  Tensor input_;
  int64_t input_first_ = 0;
  int64_t total_tokens_ = 0;
  std::vector<StepSummary> steps_;
  double check_error_ = 0;
  bool check_done_ = false;
  // Where the weights came from; set before the steps (its checkpoint is
  // Run()'s and outlives them).
  std::optional<RunWeights> run_weights_;
  std::optional<ep::MoeWeights> reference_weights_;
  std::optional<balance::LiveRebalancer> rebalancer_;
  size_t events_started_ = 0, events_live_ = 0;
  std::string dispatch_path_;
  launcher::WorkerSession* session_;
  int64_t start_version_ = 1;  // the placement version served from the start
  std::unique_ptr<ep::GpuLayer> gpu_layer_;  // --device cuda
};

}  // namespace

absl::StatusOr<std::unique_ptr<transport::Transport>> CreateRankTransport(const std::string& name) {
  return transport::CreateTransport(name);
}

int RunRun(const RunFlags& given, int* argc, char*** argv) {
  RunFlags flags = given;
  absl::StatusOr<std::unique_ptr<transport::MpiSession>> mpi = transport::MpiSession::Start(argc, argv);
  if (!mpi.ok()) {
    std::cerr << "moex run: error: " << mpi.status().message() << "\n";
    return 1;
  }
  const int rank = (*mpi)->rank();
  auto fail = [&](const absl::Status& status) -> int {
    // One write per line, so that mpirun does not interleave ranks mid-line.
    std::string line = StrCat("moex run: rank ", rank, ": error: ", status.message(), "\n");
    (void)!write(STDERR_FILENO, line.data(), line.size());
    // Every rank that can still speak says why; then the whole job ends.
    (*mpi)->Abort(1, 2.0);
  };
  // Ranks share the machine's cores; one BLAS thread each unless told.
  const char* threads = std::getenv("MOEX_BLAS_THREADS");
  kernels::SetBlasThreads(threads != nullptr ? std::max(1, std::atoi(threads)) : 1);

  // A worker takes its spec from the controller.
  std::unique_ptr<launcher::WorkerSession> worker;
  if (!flags.job_id.empty()) {
    // Test hook: MOEX_FAULT_UNREACHABLE_RANK=r gives rank r an address where
    // no controller listens.
    const char* unreachable = std::getenv("MOEX_FAULT_UNREACHABLE_RANK");
    if (unreachable != nullptr && std::atoi(unreachable) == rank) flags.controller = "127.0.0.1:1";
    auto registered = launcher::WorkerSession::Register(flags.controller, flags.job_id, rank, (*mpi)->world_size());
    if (!registered.ok()) return fail(registered.status());
    worker = std::move(*registered);
    const moex::v1::JobSpec& spec = worker->spec();
    flags.model = spec.model();
    flags.steps = spec.steps();
    flags.tokens_per_rank = spec.tokens_per_rank();
    flags.transport = spec.transport();
    if (spec.has_layer()) flags.layer = spec.layer();
    flags.routing_skew = spec.routing_skew();
    flags.seed = spec.seed();
    flags.redundant_experts = spec.redundant_experts();
    flags.check = spec.check();
    flags.timeout_seconds = spec.exchange_timeout_seconds() > 0 ? spec.exchange_timeout_seconds() : 60.0;
    flags.first_step = worker->first_step();
    flags.weights = spec.weights();
    flags.weight_cache = worker->weight_cache_dir();
  }

  if (absl::Status device = ValidateDevice(flags); !device.ok()) return fail(device);
  absl::StatusOr<std::unique_ptr<transport::Transport>> transport = CreateRankTransport(flags.transport);
  if (!transport.ok()) return fail(transport.status());
  if (worker && worker->spec().has_bench()) {
    absl::Status benched = RunBenchJob(*worker, **transport);
    if (!benched.ok()) return fail(benched);
    transport->reset();
    worker->Finished();
    return 0;
  }
  Runner runner(flags, **transport, worker.get());
  absl::Status status = runner.Run();
  if (!status.ok()) return fail(status);
  transport->reset();
  if (worker) worker->Finished();
  return 0;
}

}  // namespace moex::cli
