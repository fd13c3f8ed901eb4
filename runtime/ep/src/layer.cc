#include "moex/ep/layer.h"

#include <algorithm>

namespace moex::ep {

std::vector<int64_t> Layer::TokensPerExpert(const StepStats& stats) const {
  const placement::Placement& p = placement();
  std::vector<int64_t> out(p.num_experts(), 0);
  const int64_t first = p.first_slot(rank());
  const int64_t slots = std::min<int64_t>(p.num_local_slots(rank()), static_cast<int64_t>(stats.tokens_per_local_slot.size()));
  for (int64_t i = 0; i < slots; ++i) out[p.slot_expert(first + i)] += stats.tokens_per_local_slot[i];
  return out;
}

}  // namespace moex::ep
