// The controller's placements: each job's published expert placement, the
// load its rank 0 reports, and the rebalancing decisions (on the job's
// threshold or on request). JobManager's methods, kept apart from the job
// lifecycle in job_manager.cc.
#include <algorithm>
#include <optional>

#include "absl/strings/str_format.h"
#include "moex/cluster/job_manager.h"
#include "moex/cluster/placement_proto.h"
#include "moex/core/status_macros.h"
#include "moex/core/echo.h"
#include "moex/core/log.h"
#include "moex/core/str_cat.h"
#include "moex/model/moe_layer_spec.h"
#include "moex/model/model_loader.h"
#include "moex/placement/eplb.h"
#include "moex/placement/policy.h"
#include "moex/placement/placement.h"

namespace moex::cluster {

using moex::v1::Job;

absl::StatusOr<moex::v1::Placement> InitialPlacement(const moex::v1::JobSpec& spec, int world) {
  MOEX_ASSIGN_OR_RETURN(model::ModelArch arch, model::LoadModel(spec.model()));
  std::optional<int64_t> layer;
  if (spec.has_layer()) layer = spec.layer();
  MOEX_ASSIGN_OR_RETURN(model::MoeLayerSpec layer_spec, model::MoeLayerSpec::FromArch(arch, layer));
  MOEX_ASSIGN_OR_RETURN(placement::Placement initial,
                        placement::Placement::Contiguous(layer_spec.num_experts, world, spec.redundant_experts()));
  return ToProto(initial);
}

absl::Status JobManager::EnsurePlacement(Entry& entry) {
  if (entry.job.placement().version() > 0) return absl::OkStatus();
  const moex::v1::JobSpec& spec = entry.job.spec();
  if (spec.has_bench()) return absl::FailedPreconditionError(StrCat("job ", entry.job.id(), " is a bench job: it has no placement"));
  // Jobs submitted since placements were made at submit have one; a record
  // from before reads its model here, under the lock, once.
  MOEX_ASSIGN_OR_RETURN(*entry.job.mutable_placement(), InitialPlacement(spec, World(entry.job)));
  return absl::OkStatus();
}

absl::StatusOr<moex::v1::Placement> JobManager::GetPlacement(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return absl::NotFoundError(StrCat("no job '", Echo(id), "'"));
  MOEX_RETURN_IF_ERROR(EnsurePlacement(it->second));
  return it->second.job.placement();
}

absl::StatusOr<moex::v1::Placement> JobManager::Publish(Entry& entry, const std::string& policy,
                                                       const std::string& reason) {
  Job& job = entry.job;
  MOEX_RETURN_IF_ERROR(EnsurePlacement(entry));
  if (!entry.load || entry.load->window_steps() == 0) {
    return absl::FailedPreconditionError(StrCat("job ", job.id(), " has reported no load yet: nothing to plan from"));
  }
  if (job.metrics().placement_version() < job.placement().version() && job.placement().version() > 1) {
    return absl::FailedPreconditionError(StrCat("job ", job.id(), ": placement version ", job.placement().version(),
                                                " is still migrating (the ranks serve version ",
                                                job.metrics().placement_version(), ")"));
  }
  MOEX_ASSIGN_OR_RETURN(placement::Placement current, FromProto(job.placement()));
  const int world = current.world_size();
  if (current.num_slots() % world != 0) {
    return absl::FailedPreconditionError(StrCat("job ", job.id(), ": rebalancing needs the expert slots (",
                                                current.num_slots(), ") to divide evenly over its ", world, " ranks"));
  }
  placement::PlanInput input;
  input.load = {entry.load->window_load()};
  input.num_replicas = current.num_slots();
  input.num_gpus = world;
  input.current = {current.slot_experts()};
  MOEX_ASSIGN_OR_RETURN(placement::EplbPlacement plan, placement::PlanPlacement(policy, input));
  MOEX_ASSIGN_OR_RETURN(placement::Placement next,
                        placement::Placement::FromSlots(current.num_experts(), plan.phy2log[0],
                                                        std::vector<int64_t>(world, current.num_slots() / world),
                                                        current.version() + 1));
  moex::v1::RebalanceRecord* record = job.add_rebalances();
  record->set_version(next.version());
  record->set_decided_at_step(entry.load->steps());
  record->set_policy(policy);
  record->set_reason(reason);
  record->set_imbalance_before(placement::Imbalance(placement::RankLoads(current, entry.load->window_load())));
  record->set_imbalance_after(placement::Imbalance(placement::RankLoads(next, entry.load->window_load())));
  record->set_experts_moved(placement::CountMoves(input.current, plan.phy2log, world));
  ++counters_.rebalances;
  counters_.experts_moved += record->experts_moved();
  log::Info("placement published", {{"job_id", job.id()},
                                    {"version", std::to_string(next.version())},
                                    {"policy", policy},
                                    {"reason", reason},
                                    {"experts_moved", std::to_string(record->experts_moved())},
                                    {"imbalance_before", StrCat(record->imbalance_before())},
                                    {"imbalance_after", StrCat(record->imbalance_after())}});
  *job.mutable_placement() = ToProto(next);
  entry.last_publish_step = entry.load->steps();
  Persist(entry);
  return job.placement();
}

absl::Status JobManager::PublishForWorld(Entry& entry, int world, const std::string& reason) {
  Job& job = entry.job;
  MOEX_RETURN_IF_ERROR(EnsurePlacement(entry));
  MOEX_ASSIGN_OR_RETURN(placement::Placement current, FromProto(job.placement()));
  const int64_t experts = current.num_experts();
  int64_t per_rank = 0;
  for (int r = 0; r < current.world_size(); ++r) per_rank = std::max(per_rank, current.num_local_slots(r));
  const int64_t capacity = per_rank * world;
  if (capacity < experts) {
    return absl::FailedPreconditionError(StrCat(world, " ranks of ", per_rank, " expert slots hold ", capacity,
                                                " slots; the layer has ", experts, " experts, so it needs at least ",
                                                (experts + per_rank - 1) / per_rank, " ranks"));
  }
  // Every logical expert stays held; the redundant replicas go first.
  const int64_t slots = std::min<int64_t>(capacity, current.num_slots());
  std::optional<placement::Placement> next;
  if (entry.load && entry.load->window_steps() > 0 && slots % world == 0) {
    placement::PlanInput input;
    input.load = {entry.load->window_load()};
    input.num_replicas = slots;
    input.num_gpus = world;
    absl::StatusOr<placement::EplbPlacement> plan = placement::PlanPlacement(job.spec().rebalance().policy(), input);
    if (plan.ok()) {
      MOEX_ASSIGN_OR_RETURN(next, placement::Placement::FromSlots(experts, plan->phy2log[0],
                                                                  std::vector<int64_t>(world, slots / world)));
    }
  }
  if (!next) {
    MOEX_ASSIGN_OR_RETURN(next, placement::Placement::Contiguous(experts, world, slots - experts));
  }
  moex::v1::RebalanceRecord* record = job.add_rebalances();
  record->set_version(job.placement().version() + 1);
  record->set_decided_at_step(job.metrics().steps_done());
  record->set_policy(entry.load && entry.load->window_steps() > 0 ? job.spec().rebalance().policy() : "contiguous");
  record->set_reason(reason);
  if (entry.load && entry.load->window_steps() > 0) {
    record->set_imbalance_before(placement::Imbalance(placement::RankLoads(current, entry.load->window_load())));
    record->set_imbalance_after(placement::Imbalance(placement::RankLoads(*next, entry.load->window_load())));
  }
  *job.mutable_placement() = ToProto(next->WithVersion(record->version()));
  ++counters_.rebalances;
  log::Info("placement published for a new world size", {{"job_id", job.id()},
                                                         {"version", std::to_string(record->version())},
                                                         {"world_size", std::to_string(world)},
                                                         {"reason", reason}});
  // The new ranks start on it: the old window described other ranks.
  if (entry.load) entry.load->ClearWindow();
  entry.last_publish_step.reset();
  return absl::OkStatus();
}

absl::StatusOr<moex::v1::Placement> JobManager::Rebalance(const std::string& id, const std::string& policy) {
  absl::StatusOr<moex::v1::Placement> out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return absl::NotFoundError(StrCat("no job '", Echo(id), "'"));
    if (it->second.job.state() != moex::v1::JOB_STATE_RUNNING) {
      return absl::FailedPreconditionError(StrCat("job ", id, " is ", JobState_Name(it->second.job.state()),
                                                  "; only a running job can be rebalanced"));
    }
    absl::StatusOr<std::string> chosen =
        placement::CanonicalPolicy(policy.empty() ? it->second.job.spec().rebalance().policy() : policy);
    if (!chosen.ok()) return chosen.status();
    out = Publish(it->second, *chosen, "requested");
  }
  if (out.ok()) Notify(id);
  return out;
}


void JobManager::RecordLoad(Entry& entry, const moex::v1::ReportStepRequest& r) {
  Job& job = entry.job;
  if (r.tokens_per_expert().empty() || r.step() <= job.load().steps()) return;  // a repeated final report
  if (!entry.load || static_cast<int>(entry.load->window_load().size()) != r.tokens_per_expert_size()) {
    entry.load.emplace(r.tokens_per_expert_size(), std::max(1, job.spec().rebalance().window()));
  }
  // A new placement serving: the old window says nothing about its ranks.
  if (r.metrics().placement_version() > job.metrics().placement_version() && job.metrics().placement_version() > 0) {
    entry.load->ClearWindow();
  }
  entry.load->Add(std::vector<int64_t>(r.tokens_per_expert().begin(), r.tokens_per_expert().end()));
  moex::v1::LoadStats* stats = job.mutable_load();
  stats->set_steps(r.step());
  stats->set_window_steps(static_cast<int32_t>(entry.load->window_steps()));
  stats->clear_window_tokens_per_expert();
  for (double v : entry.load->window_load()) stats->add_window_tokens_per_expert(v);
  stats->clear_ema_tokens_per_expert();
  for (double v : entry.load->ema()) stats->add_ema_tokens_per_expert(v);
  if (EnsurePlacement(entry).ok()) {
    absl::StatusOr<placement::Placement> serving = FromProto(job.placement());
    if (serving.ok() && serving->num_experts() == r.tokens_per_expert_size()) {
      stats->set_window_imbalance(placement::Imbalance(placement::RankLoads(*serving, entry.load->window_load())));
    }
  }
}

void JobManager::MaybeRebalance(Entry& entry) {
  const Job& job = entry.job;
  const moex::v1::RebalanceSpec& spec = job.spec().rebalance();
  if (spec.threshold() <= 0 || !entry.load || entry.load->window_steps() < spec.window()) return;
  if (job.metrics().placement_version() < job.placement().version()) return;  // still migrating
  if (entry.last_publish_step && job.load().steps() - *entry.last_publish_step < spec.interval()) return;
  if (job.load().window_imbalance() <= spec.threshold()) return;
  std::string reason = absl::StrFormat("window imbalance %.3f > threshold %.3f", job.load().window_imbalance(),
                                       spec.threshold());
  // A record written before the policy's rename says "moex".
  const std::string policy = placement::CanonicalPolicy(spec.policy()).value_or(std::string(placement::kDefaultPolicy));
  absl::StatusOr<moex::v1::Placement> published = Publish(entry, policy, reason);
  if (!published.ok()) {
    // Not fatal to the job: it keeps its placement; the reason is kept.
    entry.job.set_message(StrCat("running; rebalancing skipped: ", published.status().message()));
    entry.last_publish_step = job.load().steps();
  }
}

}  // namespace moex::cluster
