// Dispatch and combine, DeepEP-shaped.
//
//   layout = GetDispatchLayout(placement, topk_idx, ...)        who goes where
//   dispatcher.Dispatch(transport, placement, x, layout, w, &received)
//   ...experts form per-token partial sums on their rank...
//   dispatcher.Combine(transport, received, partial, &y)        sums back home
//
// A token crosses to a rank once, however many of that rank's experts it
// chose; it travels with its (local slot, weight) pairs for that rank, and
// one partial-sum vector per (token, rank) comes back. Dropless: every routed
// pair is served, there is no capacity factor.
//
// The Dispatcher owns its send and receive buffers and reuses them, so a
// step allocates nothing once the sizes have been seen. A token's visit to
// its own rank is never copied: the received row points into `x`. Rows from
// other ranks are used where they landed in the receive buffer.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/placement.h"
#include "moex/transport/transport.h"

namespace moex::ep {

struct DispatchLayout {
  int world_size = 0;
  int64_t num_tokens = 0;  // T, local tokens
  int64_t top_k = 0;       // k
  std::vector<int64_t> topk_slot;              // [T, k] physical slot of each routed expert
  std::vector<int64_t> num_tokens_per_rank;    // [W] distinct tokens sent to each rank
  std::vector<int64_t> num_tokens_per_expert;  // [S] routed (token, slot) pairs per slot
  std::vector<uint8_t> is_token_in_rank;       // [T, W]
};

// topk_idx [T, k] holds logical experts; `first_token` is the global index of
// local token 0 (it picks replicas).
DispatchLayout GetDispatchLayout(const Placement& placement, const int32_t* topk_idx,
                                 int64_t num_tokens, int64_t top_k, int64_t first_token);

// What a rank received, and what combine needs to send the sums back.
struct DispatchResult {
  int64_t hidden = 0;
  int64_t top_k = 0;
  std::vector<const float*> recv_rows;              // [R] each a row of H floats, source-rank-major
  std::vector<int32_t> recv_local_slot;             // [R, k] slot on this rank, or -1
  std::vector<float> recv_weights;                  // [R, k]
  std::vector<int64_t> num_recv_tokens_per_expert;  // [local slots]
  std::vector<int64_t> send_tokens;                 // [W] rows sent to each rank (self included)
  std::vector<int64_t> recv_tokens;                 // [W] rows received from each rank
  std::vector<int64_t> send_order;                  // local token of each sent row, destination-major
  int64_t bytes_sent = 0;                           // payload sent to other ranks
  int64_t num_recv() const { return static_cast<int64_t>(recv_rows.size()); }
};

class Dispatcher {
 public:
  // `out` is reused across calls; its rows stay valid until the next
  // Dispatch and while `x` lives.
  absl::Status Dispatch(transport::Transport& transport, const Placement& placement, const Tensor& x,
                        const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                        DispatchResult* out);

  // partial [R, H] (rows in `received` order) goes back along `received`;
  // `y` [T, H] gets the sum over ranks, added in rank order. `bytes_sent`
  // gets what this rank sent to other ranks.
  absl::Status Combine(transport::Transport& transport, const DispatchResult& received,
                       const Tensor& partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);

 private:
  std::vector<float> send_, recv_, back_;
};

}  // namespace moex::ep
