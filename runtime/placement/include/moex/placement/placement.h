// Where experts live: logical experts -> physical expert slots -> ranks.
//
// Slots are numbered rank by rank (rank 0 holds slots [0, n0), rank 1 the
// next ones...), as EPLB's phy2log orders them. A logical expert may have
// several slots (redundant replicas); a token routed to it goes to exactly
// one, chosen from the token's global index, so replicas share the load and
// every rank makes the same choice.
//
// A placement carries a version: 1 for the one a job starts with, and one
// more for each placement that replaces it (live rebalancing, the
// controller's Rebalance). This one type is what the policies' results, the
// controller's records (moex.v1.Placement, through cluster/placement_proto.h)
// and the ranks all use.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace moex::placement {

class Placement {
 public:
  // Experts 0..E-1 in order, then `num_redundant` replicas of experts spread
  // over the id range, split over the ranks as evenly as possible.
  static absl::StatusOr<Placement> Contiguous(int64_t num_experts, int world_size,
                                              int64_t num_redundant = 0);
  // Any layout: slot_expert[s] is the logical expert of slot s, and rank r
  // holds slots_per_rank[r] consecutive slots.
  static absl::StatusOr<Placement> FromSlots(int64_t num_experts, std::vector<int64_t> slot_expert,
                                             std::vector<int64_t> slots_per_rank, int64_t version = 1);

  int64_t version() const { return version_; }
  // The same slots as a later version (versions only grow).
  Placement WithVersion(int64_t version) const {
    Placement next = *this;
    next.version_ = version;
    return next;
  }
  // Slot s holds logical expert slot_experts()[s] (EPLB's phy2log).
  const std::vector<int64_t>& slot_experts() const { return slot_expert_; }
  const std::vector<int64_t>& slots_per_rank() const { return slots_per_rank_; }
  bool SameSlots(const Placement& other) const {
    return num_experts_ == other.num_experts_ && slot_expert_ == other.slot_expert_ &&
           slots_per_rank_ == other.slots_per_rank_;
  }

  int64_t num_experts() const { return num_experts_; }
  int64_t num_slots() const { return static_cast<int64_t>(slot_expert_.size()); }
  int world_size() const { return static_cast<int>(slots_per_rank_.size()); }
  int64_t slot_expert(int64_t slot) const { return slot_expert_[slot]; }
  int slot_rank(int64_t slot) const { return slot_rank_[slot]; }
  int64_t first_slot(int rank) const { return first_slot_[rank]; }
  int64_t num_local_slots(int rank) const { return slots_per_rank_[rank]; }
  const std::vector<int64_t>& expert_slots(int64_t expert) const { return expert_slots_[expert]; }
  // The slot that serves `expert` for the token with global index `token`.
  int64_t ChooseSlot(int64_t expert, int64_t token) const {
    const std::vector<int64_t>& slots = expert_slots_[expert];
    return slots[static_cast<size_t>(token) % slots.size()];
  }

 private:
  int64_t num_experts_ = 0;
  int64_t version_ = 1;
  std::vector<int64_t> slot_expert_;
  std::vector<int> slot_rank_;
  std::vector<int64_t> slots_per_rank_;
  std::vector<int64_t> first_slot_;
  std::vector<std::vector<int64_t>> expert_slots_;
};

}  // namespace moex::placement
