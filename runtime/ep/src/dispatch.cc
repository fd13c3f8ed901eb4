#include "moex/ep/dispatch.h"

#include <cstring>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

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

namespace {

// One dispatched token on the wire: H floats, then k (int32 local slot or
// -1, float weight) pairs.
int64_t RecordFloats(int64_t hidden, int64_t top_k) { return hidden + 2 * top_k; }

}  // namespace

absl::StatusOr<DispatchResult> Dispatch(transport::Transport& transport, const Placement& placement,
                                        const Tensor& x, const DispatchLayout& layout,
                                        const float* topk_weights, Deadline deadline) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t T = layout.num_tokens, k = layout.top_k;
  if (placement.world_size() != world || layout.world_size != world) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": placement for ",
                                             placement.world_size(), " ranks, transport has ", world));
  }
  if (x.shape.size() != 2 || x.dim(0) != T) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": x has shape ",
                                             ShapeString(x.shape), ", the layout has ", T, " tokens"));
  }
  const int64_t H = x.dim(1), record = RecordFloats(H, k);
  DispatchResult result;
  DispatchHandle& handle = result.handle;
  handle.hidden = H;
  handle.send_tokens = layout.num_tokens_per_rank;
  handle.recv_tokens.assign(world, 0);
  MOEX_RETURN_IF_ERROR(transport.ExchangeCounts(handle.send_tokens, handle.recv_tokens, deadline));

  // Pack, destination-major; a token's pairs for that rank only.
  int64_t total_send = 0;
  for (int r = 0; r < world; ++r) total_send += handle.send_tokens[r];
  std::vector<float> send(total_send * record);
  handle.send_order.reserve(total_send);
  int64_t row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * world + r]) continue;
      float* out = send.data() + row * record;
      std::memcpy(out, x.row(t), H * sizeof(float));
      auto* slots = reinterpret_cast<int32_t*>(out + H);
      float* weights = out + H + k;
      for (int64_t j = 0; j < k; ++j) {
        int64_t slot = layout.topk_slot[t * k + j];
        bool here = placement.slot_rank(slot) == r;
        slots[j] = here ? static_cast<int32_t>(slot - placement.first_slot(r)) : -1;
        weights[j] = here ? topk_weights[t * k + j] : 0.0f;
      }
      handle.send_order.push_back(t);
      ++row;
    }
  }
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  int64_t total_recv = 0;
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = handle.send_tokens[r] * record * static_cast<int64_t>(sizeof(float));
    recv_bytes[r] = handle.recv_tokens[r] * record * static_cast<int64_t>(sizeof(float));
    total_recv += handle.recv_tokens[r];
    if (r != me) result.bytes_sent += send_bytes[r];
  }
  std::vector<float> recv(total_recv * record);
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(send.data()), send_bytes,
                                           reinterpret_cast<std::byte*>(recv.data()), recv_bytes,
                                           deadline));

  // Unpack into the receive buffers and count tokens per local expert.
  const int64_t local_slots = placement.num_local_slots(me);
  result.recv_x = Tensor({total_recv, H});
  result.recv_local_slot.resize(total_recv * k);
  result.recv_weights.resize(total_recv * k);
  result.num_recv_tokens_per_expert.assign(local_slots, 0);
  for (int64_t i = 0; i < total_recv; ++i) {
    const float* in = recv.data() + i * record;
    std::memcpy(result.recv_x.row(i), in, H * sizeof(float));
    const auto* slots = reinterpret_cast<const int32_t*>(in + H);
    for (int64_t j = 0; j < k; ++j) {
      int32_t slot = slots[j];
      if (slot < -1 || slot >= local_slots) {
        return absl::DataLossError(StrCat("dispatch on rank ", me, ": received slot ", slot,
                                          " outside this rank's ", local_slots, " slots"));
      }
      result.recv_local_slot[i * k + j] = slot;
      result.recv_weights[i * k + j] = in[H + k + j];
      if (slot >= 0) ++result.num_recv_tokens_per_expert[slot];
    }
  }
  return result;
}

absl::Status Combine(transport::Transport& transport, const DispatchHandle& handle,
                     const Tensor& partial, Tensor* out, int64_t* bytes_sent, Deadline deadline) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t H = handle.hidden;
  int64_t total_recv = 0;
  for (int64_t n : handle.recv_tokens) total_recv += n;
  if (partial.shape.size() != 2 || partial.dim(0) != total_recv || partial.dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("combine on rank ", me, ": partial sums have shape ",
                                             ShapeString(partial.shape), ", expected ",
                                             ShapeString({total_recv, H})));
  }
  // Back the way they came: what a rank received from r returns to r.
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  *bytes_sent = 0;
  int64_t total_back = 0;
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = handle.recv_tokens[r] * H * static_cast<int64_t>(sizeof(float));
    recv_bytes[r] = handle.send_tokens[r] * H * static_cast<int64_t>(sizeof(float));
    total_back += handle.send_tokens[r];
    if (r != me) *bytes_sent += send_bytes[r];
  }
  std::vector<float> back(total_back * H);
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(partial.data()),
                                           send_bytes, reinterpret_cast<std::byte*>(back.data()),
                                           recv_bytes, deadline));
  // Rows arrive source-rank-major, in send order: add each to its token.
  for (int64_t i = 0; i < total_back; ++i) {
    float* y = out->row(handle.send_order[i]);
    const float* add = back.data() + i * H;
    for (int64_t h = 0; h < H; ++h) y[h] += add[h];
  }
  return absl::OkStatus();
}

}  // namespace moex::ep
