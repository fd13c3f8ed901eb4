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
// Two paths, chosen once, at the first Dispatch, the same on every rank:
// - intra-node (every rank on this host; MOEX_INTRANODE=0 turns it off):
//   each rank writes its tokens' records straight into the receiving rank's
//   area of shared memory (transport/shared_segments.h), the experts write
//   their partial sums into their own rank's shared area, and each token's
//   home rank reads them from there as it adds them up: every byte crosses
//   once, with no packing and no receive-side copy; two transport barriers
//   order it.
// - otherwise: records are packed per destination and exchanged with the
//   transport's all-to-all-v, and so are the partial sums.
//
// The Dispatcher owns its send and receive buffers and reuses them, so a
// step allocates nothing once the sizes have been seen. A token's visit to
// its own rank is never copied: the received row points into `x`. Rows from
// other ranks are used where they landed in the receive buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/placement/placement.h"
#include "moex/transport/shared_segments.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// The placement layer's type, by its short name in this layer.
using Placement = ::moex::placement::Placement;

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
  // Intra-node path: rows are source-rank-major, the own block in place;
  // counts[s * W + d] tokens went from rank s to rank d.
  bool shared = false;
  std::vector<int64_t> counts;
  int64_t num_recv() const { return static_cast<int64_t>(recv_rows.size()); }
};

class Dispatcher {
 public:
  // `out` is reused across calls; its rows stay valid until the next
  // Dispatch and while `x` lives.
  absl::Status Dispatch(transport::Transport& transport, const Placement& placement, const Tensor& x,
                        const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                        DispatchResult* out);

  // Where the experts should write the partial sums [R, H] of `received`
  // (zeroed here): in shared memory on the intra-node path, so that combine
  // moves nothing twice. Valid until the next Dispatch.
  float* PartialBuffer(const DispatchResult& received);
  // The partial sums [R, H] (rows in `received` order) go back along
  // `received`; `y` [T, H] gets the sum over ranks, added in rank order.
  // `bytes_sent` gets what this rank sent to (or left for) other ranks.
  // `partial` is best PartialBuffer(received); anything else is copied there.
  absl::Status Combine(transport::Transport& transport, const DispatchResult& received,
                       const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  absl::Status Combine(transport::Transport& transport, const DispatchResult& received,
                       const Tensor& partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  // "shared memory" or "all-to-all-v" once chosen, else "".
  std::string_view path() const;

 private:
  absl::Status ChoosePath(transport::Transport& transport, Deadline deadline);
  absl::Status DispatchCopy(transport::Transport& transport, const Placement& placement, const Tensor& x,
                            const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                            DispatchResult* out);
  absl::Status DispatchShared(transport::Transport& transport, const Placement& placement, const Tensor& x,
                              const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                              DispatchResult* out);
  absl::Status CombineShared(transport::Transport& transport, const DispatchResult& received, const float* partial,
                             Tensor* y, int64_t* bytes_sent, Deadline deadline);
  // Rank d's receive area (rows x record) and partial-sum area, from the counts.
  struct Areas {
    int64_t rows = 0, partial_offset = 0, bytes = 0;
  };
  static Areas AreasOf(const std::vector<int64_t>& counts, int world, int d, int64_t record_bytes, int64_t hidden);

  enum class Path { kUnchosen, kShared, kCopy };
  Path path_ = Path::kUnchosen;
  int rank_ = 0;
  std::unique_ptr<transport::SharedSegments> shm_;
  std::vector<float> send_, recv_, back_, partial_;
  std::vector<const float*> sources_;  // [T, W] partial-sum row of each (token, rank), or null
};

}  // namespace moex::ep
