// GetDispatchLayout: who goes where, before anything moves.
#include "moex/ep/dispatch.h"

namespace moex::ep {

DispatchLayout GetDispatchLayout(const Placement& placement, const int32_t* topk_idx,
                                 int64_t num_tokens, int64_t top_k, int64_t first_token) {
  DispatchLayout layout;
  const int world = placement.world_size();
  layout.world_size = world;
  layout.num_tokens = num_tokens;
  layout.top_k = top_k;
  layout.topk_slot.resize(num_tokens * top_k);
  layout.num_tokens_per_rank.assign(world, 0);
  layout.num_tokens_per_expert.assign(placement.num_slots(), 0);
  layout.is_token_in_rank.assign(num_tokens * world, 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      int64_t slot = placement.ChooseSlot(topk_idx[t * top_k + j], first_token + t);
      layout.topk_slot[t * top_k + j] = slot;
      ++layout.num_tokens_per_expert[slot];
      layout.is_token_in_rank[t * world + placement.slot_rank(slot)] = 1;
    }
    for (int r = 0; r < world; ++r) layout.num_tokens_per_rank[r] += layout.is_token_in_rank[t * world + r];
  }
  return layout;
}

}  // namespace moex::ep
