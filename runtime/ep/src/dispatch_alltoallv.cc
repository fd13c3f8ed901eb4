// The all-to-all-v path: records packed per destination go out with the
// transport's all-to-all-v, and the partial sums come back the same way.
// Wherever the ranks are, over whatever the transport is.
//
// The own block never travels: its received rows point into x, and its
// partial sums are added from the partial buffer where the experts wrote
// them, at this rank's position among the sources (the all-to-all-v's
// offsets step over it).
#include <cstring>

#include "dispatch_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {

using dispatch_internal::FillPairs;
using dispatch_internal::FillReceived;
using dispatch_internal::RecordFloats;
using dispatch_internal::SizeReceived;
using dispatch_internal::WireRecordBytes;

absl::Status Dispatcher::DispatchAllToAllV(transport::Transport& transport, const Placement& placement,
                                           const Tensor& x, const DispatchLayout& layout, const float* topk_weights,
                                           Deadline deadline, DispatchResult* out) {
  const int world = world_size_, me = rank_;
  const int64_t T = layout.num_tokens, k = layout.top_k;
  const int64_t H = x.dim(1), record = RecordFloats(H, k);
  out->path = DispatchPath::kAllToAllV;
  out->counts.clear();
  out->num_tokens = T;
  out->hidden = H;
  out->top_k = k;
  out->bytes_sent = 0;
  out->send_tokens = layout.num_tokens_per_rank;
  out->recv_tokens.assign(world, 0);
  MOEX_RETURN_IF_ERROR(transport.ExchangeCounts(out->send_tokens, out->recv_tokens, deadline));
  if (out->recv_tokens[me] != out->send_tokens[me]) {
    return absl::InternalError(StrCat("dispatch on rank ", me, ": the counts exchange returned ",
                                      out->recv_tokens[me], " own tokens, sent ", out->send_tokens[me]));
  }

  // Pack the blocks for other ranks, destination-major, in the wire dtype.
  // The own block is not packed: its rows are read from x in place.
  const int64_t wire = WireRecordBytes(options_.dtype, H, k), wire_row = WireRowBytes(options_.dtype, H);
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  int64_t packed = 0, remote_recv = 0;
  for (int r = 0; r < world; ++r) {
    if (r == me) continue;
    send_bytes[r] = out->send_tokens[r] * wire;
    recv_bytes[r] = out->recv_tokens[r] * wire;
    packed += out->send_tokens[r];
    remote_recv += out->recv_tokens[r];
    out->bytes_sent += send_bytes[r];
  }
  if (static_cast<int64_t>(send_.size()) < packed * wire / 4) send_.resize(packed * wire / 4);
  std::byte* const send = reinterpret_cast<std::byte*>(send_.data());
  out->send_order.clear();
  int64_t row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * world + r]) continue;
      out->send_order.push_back(t);
      if (r == me) continue;
      std::byte* dst = send + row * wire;
      WriteWireRow(x, t, dst);
      float* pairs = reinterpret_cast<float*>(dst + wire_row);
      FillPairs(placement, layout, topk_weights, t, r, reinterpret_cast<int32_t*>(pairs), pairs + k);
      ++row;
    }
  }
  // Both buffers skip the own block, whose count is 0 here: the blocks of
  // the other ranks lie back to back, in rank order.
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(send, send_bytes, WireReceiveBuffer(remote_recv, H, k), recv_bytes,
                                           deadline));
  DecodeWireRecords(remote_recv, H, k);

  // Received rows, source-rank-major: other ranks' where they landed in the
  // receive buffer (as fp32 records), ours read from x at our own position.
  const int64_t own_begin =
      SizeReceived(out, remote_recv + out->recv_tokens[me], k, placement.num_local_slots(me), me);
  std::vector<const float*> first_record(world, nullptr);
  int64_t landed = 0;
  for (int s = 0; s < world; ++s) {
    if (s == me) continue;
    first_record[s] = recv_.data() + landed * record;
    landed += out->recv_tokens[s];
  }
  return FillReceived(placement, layout, x, topk_weights, me, own_begin, first_record, record, out);
}

absl::StatusOr<int64_t> Dispatcher::ReturnPartials(transport::Transport& transport, const DispatchResult& received,
                                                   const float* partial, const std::function<bool(int)>& over_network,
                                                   Deadline deadline) {
  const int world = world_size_;
  const int64_t H = received.hidden, row_bytes = H * static_cast<int64_t>(sizeof(float));
  // The partial sums of rank r's tokens are rows [first_row_from(r), +
  // recv_tokens[r]) of `partial`.
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  send_offsets_.assign(world, 0);
  recv_offsets_.assign(world, 0);
  int64_t back_rows = 0, first_row = 0, sent = 0;
  for (int r = 0; r < world; ++r) {
    send_offsets_[r] = first_row * row_bytes;
    recv_offsets_[r] = back_rows * row_bytes;
    first_row += received.recv_tokens[r];
    if (!over_network(r)) continue;
    send_bytes[r] = received.recv_tokens[r] * row_bytes;
    recv_bytes[r] = received.send_tokens[r] * row_bytes;
    back_rows += received.send_tokens[r];
    sent += send_bytes[r];
  }
  if (static_cast<int64_t>(back_.size()) < back_rows * H) back_.resize(back_rows * H);
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(partial), send_bytes, send_offsets_,
                                           reinterpret_cast<std::byte*>(back_.data()), recv_bytes, recv_offsets_,
                                           deadline));
  return sent;
}

absl::Status Dispatcher::CombineAllToAllV(transport::Transport& transport, const DispatchResult& received,
                                          const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int world = world_size_, me = rank_;
  const int64_t H = received.hidden;
  // Back the way they came; ours stay where they are.
  MOEX_ASSIGN_OR_RETURN(*bytes_sent,
                        ReturnPartials(transport, received, partial, [me](int r) { return r != me; }, deadline));
  // Add each rank's rows to their tokens, in rank order.
  const float* own = partial + received.first_row_from(me) * H;
  int64_t order = 0, back_row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t n = 0; n < received.send_tokens[r]; ++n, ++order) {
      float* out = y->row(received.send_order[order]);
      const float* add = r == me ? own + n * H : back_.data() + (back_row++) * H;
      for (int64_t h = 0; h < H; ++h) out[h] += add[h];
    }
  }
  return absl::OkStatus();
}

}  // namespace moex::ep
