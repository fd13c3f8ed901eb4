#include "moex/balance/live_rebalancer.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/placement/policy.h"

namespace moex::balance {
namespace {

enum Reason : int64_t { kNone = 0, kThreshold = 1, kRequested = 2, kController = 3 };

}  // namespace

absl::StatusOr<LiveRebalancer> LiveRebalancer::Create(RebalanceOptions options, const ep::Layer& layer, int world) {
  const placement::Placement& p = layer.placement();
  if (p.num_slots() % world != 0) {
    return absl::InvalidArgumentError(StrCat("rebalancing needs the expert slots to divide evenly over the ranks: ",
                                             p.num_experts(), " experts + ", p.num_slots() - p.num_experts(),
                                             " replicas = ", p.num_slots(), " slots over ", world,
                                             " ranks; change --redundant-experts"));
  }
  if (absl::Status known = placement::CanonicalPolicy(options.policy).status(); !known.ok()) {
    return absl::InvalidArgumentError(StrCat("rebalance ", known.message()));
  }
  if (options.threshold < 0 || options.interval < 1 || options.window < 1 || options.chunk_bytes < 1) {
    return absl::InvalidArgumentError("rebalancing needs threshold >= 0, interval >= 1, window >= 1, chunk bytes >= 1");
  }
  const int64_t initial = std::max<int64_t>(1, options.initial_version);
  LiveRebalancer made(std::move(options), p.num_experts());
  made.version_ = initial;
  return made;
}

double LiveRebalancer::WindowImbalance(const placement::Placement& placement) const {
  if (tracker_.window_steps() == 0) return 1.0;
  return placement::Imbalance(placement::RankLoads(placement, tracker_.window_load()));
}

absl::StatusOr<std::optional<placement::Placement>> LiveRebalancer::Decide(
    const ep::Layer& layer, int64_t step, const std::optional<placement::Placement>& published,
    std::string* reason, int world) {
  const placement::Placement& now = layer.placement();
  if (published && published->version() > version_) {
    if (published->num_slots() != now.num_slots() || published->world_size() != world ||
        published->num_experts() != now.num_experts()) {
      return absl::InvalidArgumentError(StrCat("the controller's placement version ", published->version(), " has ",
                                               published->num_slots(), " slots of ", published->num_experts(),
                                               " experts on ", published->world_size(), " ranks; the job runs ",
                                               now.num_slots(), " of ", now.num_experts(), " on ", world));
    }
    *reason = "published by the controller";
    return published;
  }
  if (step == options_.at_step) {
    *reason = StrCat("requested at step ", step);
  } else if (options_.threshold > 0 && tracker_.window_steps() >= options_.window &&
             step - last_change_step_ >= options_.interval && WindowImbalance(now) > options_.threshold) {
    *reason = absl::StrFormat("window imbalance %.3f > threshold %.3f", WindowImbalance(now), options_.threshold);
  } else {
    return std::optional<placement::Placement>();
  }
  placement::PlanInput input;
  input.load = {tracker_.window_steps() > 0 ? tracker_.window_load() : tracker_.ema()};
  input.num_replicas = now.num_slots();
  input.num_gpus = world;
  input.current = {now.slot_experts()};
  MOEX_ASSIGN_OR_RETURN(placement::EplbPlacement plan, placement::PlanPlacement(options_.policy, input));
  MOEX_ASSIGN_OR_RETURN(placement::Placement planned,
                        placement::Placement::FromSlots(now.num_experts(), plan.phy2log[0],
                                                        std::vector<int64_t>(world, now.num_slots() / world),
                                                        version_ + 1));
  return std::optional<placement::Placement>(std::move(planned));
}

absl::Status LiveRebalancer::BeginStep(transport::Transport& t, ep::Layer& layer, int64_t step,
                                       const std::optional<placement::Placement>& published, Deadline deadline) {
  if (migration_) return absl::OkStatus();  // every rank knows: no new decision mid-migration
  const int world = t.world_size();
  const int64_t slots = layer.placement().num_slots();
  // The leader's decision: {version, reason}, then the placement itself.
  std::vector<int64_t> header(2, 0);
  std::string reason;
  std::optional<placement::Placement> next;
  if (t.rank() == 0) {
    absl::StatusOr<std::optional<placement::Placement>> decided = Decide(layer, step, published, &reason, world);
    if (decided.ok()) {
      next = std::move(*decided);
    } else {
      // A placement the job cannot take does not end the job: it keeps serving.
      reason = StrCat("ignored: ", decided.status().message());
    }
    if (next) {
      header = {next->version(), published && next->version() == published->version() ? kController : kThreshold};
    }
  }
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(header), deadline));
  if (header[0] == 0) return absl::OkStatus();
  std::vector<int64_t> body(world + slots, 0);
  if (t.rank() == 0) {
    std::copy(next->slots_per_rank().begin(), next->slots_per_rank().end(), body.begin());
    std::copy(next->slot_experts().begin(), next->slot_experts().end(), body.begin() + world);
  }
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(body), deadline));
  MOEX_ASSIGN_OR_RETURN(placement::Placement planned,
                        placement::Placement::FromSlots(layer.placement().num_experts(),
                                                 std::vector<int64_t>(body.begin() + world, body.end()),
                                                 std::vector<int64_t>(body.begin(), body.begin() + world), header[0]));
  const ep::MoeLayerSpec& spec = layer.spec();
  const int64_t expert_bytes = ep::ExpertBytes(spec, layer.ExpertFormat());
  RebalanceEvent event{.version = header[0],
                       .reason = header[1] == kController ? "published by the controller"
                                 : t.rank() == 0          ? reason
                                                          : "planned by rank 0",
                       .decided_step = step,
                       .imbalance_before = WindowImbalance(layer.placement()),
                       .imbalance_after = WindowImbalance(planned)};
  MOEX_ASSIGN_OR_RETURN(Migration migration,
                        Migration::Plan(layer.placement(), std::move(planned), header[0], expert_bytes,
                                        options_.chunk_bytes));
  event.experts_moved = static_cast<int64_t>(migration.transfers().size());
  event.planned_bytes = migration.total_bytes();
  event.chunks = migration.num_chunks();
  events_.push_back(std::move(event));
  if (migration.done()) {  // nothing travels: switch now, on every rank
    MOEX_RETURN_IF_ERROR(layer.SwitchPlacement(migration.next(), {}));
    events_.back().live_step = step;
    version_ = header[0];
    last_change_step_ = step;
    tracker_.ClearWindow();
    return absl::OkStatus();
  }
  migration_ = std::move(migration);
  return absl::OkStatus();
}

absl::Status LiveRebalancer::EndStep(transport::Transport& t, ep::Layer& layer, int64_t step,
                                     std::span<const int64_t> tokens_per_expert, Deadline deadline) {
  tracker_.Add(tokens_per_expert);
  if (!migration_) return absl::OkStatus();
  if (options_.before_chunk) options_.before_chunk(migration_->chunks_done());
  MigrationStats stats;
  MOEX_RETURN_IF_ERROR(migration_->RunChunk(t, layer, deadline, &stats));
  RebalanceEvent& event = events_.back();
  event.bytes += stats.bytes_sent;  // this rank's, summed over ranks below
  event.seconds += stats.seconds;
  if (!migration_->done()) return absl::OkStatus();

  // The last chunk landed: every rank confirms it holds all it will serve.
  const placement::Placement& next = migration_->next();
  std::map<int64_t, ep::ExpertWeights> received = migration_->TakeReceived();
  double ready = 1;
  for (int64_t s = 0; s < next.num_local_slots(t.rank()); ++s) {
    int64_t e = next.slot_expert(next.first_slot(t.rank()) + s);
    if (!received.count(e) && layer.HeldExpert(e) == nullptr) ready = 0;
  }
  std::vector<double> mine = {ready, static_cast<double>(event.bytes), event.seconds};
  std::vector<double> all(3 * t.world_size());
  MOEX_RETURN_IF_ERROR(t.AllGather(mine, all, deadline));
  std::string missing;
  event.bytes = 0;
  event.seconds = 0;
  for (int r = 0; r < t.world_size(); ++r) {
    if (all[3 * r] != 1) StrAppend(&missing, missing.empty() ? "" : ", ", r);
    event.bytes += static_cast<int64_t>(all[3 * r + 1]);
    event.seconds = std::max(event.seconds, all[3 * r + 2]);
  }
  if (!missing.empty()) {
    return absl::InternalError(StrCat("placement version ", migration_->version(), " cannot go live: rank(s) ", missing,
                                      " lack experts after the migration; the old placement was kept"));
  }
  if (options_.on_received) {
    for (const auto& [expert, weights] : received) options_.on_received(expert, weights);
  }
  MOEX_RETURN_IF_ERROR(layer.SwitchPlacement(next, std::move(received)));
  event.live_step = step + 1;
  version_ = migration_->version();
  last_change_step_ = step + 1;
  tracker_.ClearWindow();
  migration_.reset();
  return absl::OkStatus();
}

}  // namespace moex::balance
