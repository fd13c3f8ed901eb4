#include "moex/placement/placement.h"

#include "moex/core/str_cat.h"

namespace moex::placement {

absl::StatusOr<Placement> Placement::Contiguous(int64_t num_experts, int world_size,
                                                int64_t num_redundant) {
  if (num_experts < 1 || world_size < 1 || num_redundant < 0) {
    return absl::InvalidArgumentError(StrCat("placement of ", num_experts, " experts with ",
                                             num_redundant, " replicas on ", world_size, " ranks"));
  }
  int64_t slots = num_experts + num_redundant;
  if (world_size > slots) {
    return absl::InvalidArgumentError(StrCat(
        "placement cannot fill ", world_size, " ranks: there are only ", slots, " expert slots (",
        num_experts, " experts + ", num_redundant, " replicas); run at most ", slots,
        " ranks or add replicas"));
  }
  std::vector<int64_t> slot_expert;
  for (int64_t e = 0; e < num_experts; ++e) slot_expert.push_back(e);
  for (int64_t r = 0; r < num_redundant; ++r) slot_expert.push_back(r * num_experts / num_redundant);
  std::vector<int64_t> per_rank(world_size);
  for (int r = 0; r < world_size; ++r) {
    per_rank[r] = (r + 1) * slots / world_size - r * slots / world_size;
  }
  return FromSlots(num_experts, std::move(slot_expert), std::move(per_rank));
}

absl::StatusOr<Placement> Placement::FromSlots(int64_t num_experts, std::vector<int64_t> slot_expert,
                                               std::vector<int64_t> slots_per_rank, int64_t version) {
  Placement p;
  if (version < 1) return absl::InvalidArgumentError(StrCat("placement version ", version, " is not >= 1"));
  p.num_experts_ = num_experts;
  p.version_ = version;
  if (num_experts < 1) return absl::InvalidArgumentError(StrCat("placement of ", num_experts, " experts"));
  int64_t total = 0;
  for (size_t r = 0; r < slots_per_rank.size(); ++r) {
    if (slots_per_rank[r] < 1) {
      return absl::InvalidArgumentError(StrCat("placement gives rank ", r, " no expert slot"));
    }
    p.first_slot_.push_back(total);
    total += slots_per_rank[r];
    for (int64_t i = 0; i < slots_per_rank[r]; ++i) p.slot_rank_.push_back(static_cast<int>(r));
  }
  if (total != static_cast<int64_t>(slot_expert.size())) {
    return absl::InvalidArgumentError(StrCat("placement: ranks hold ", total, " slots but ",
                                             slot_expert.size(), " are defined"));
  }
  p.expert_slots_.resize(num_experts);
  for (size_t s = 0; s < slot_expert.size(); ++s) {
    if (slot_expert[s] < 0 || slot_expert[s] >= num_experts) {
      return absl::InvalidArgumentError(StrCat("placement: slot ", s, " holds expert ", slot_expert[s],
                                               ", outside [0, ", num_experts, ")"));
    }
    p.expert_slots_[slot_expert[s]].push_back(static_cast<int64_t>(s));
  }
  for (int64_t e = 0; e < num_experts; ++e) {
    if (p.expert_slots_[e].empty()) {
      return absl::InvalidArgumentError(StrCat("placement: expert ", e, " has no slot on any rank"));
    }
  }
  p.slot_expert_ = std::move(slot_expert);
  p.slots_per_rank_ = std::move(slots_per_rank);
  return p;
}

}  // namespace moex::placement
