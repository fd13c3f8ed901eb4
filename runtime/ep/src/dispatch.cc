#include "moex/ep/dispatch.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

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

// The (slot, weight) pairs of token t for rank r.
void FillPairs(const Placement& placement, const DispatchLayout& layout, const float* topk_weights,
               int64_t t, int r, int32_t* slots, float* weights) {
  const int64_t k = layout.top_k;
  for (int64_t j = 0; j < k; ++j) {
    int64_t slot = layout.topk_slot[t * k + j];
    bool here = placement.slot_rank(slot) == r;
    slots[j] = here ? static_cast<int32_t>(slot - placement.first_slot(r)) : -1;
    weights[j] = here ? topk_weights[t * k + j] : 0.0f;
  }
}

// Sizes the receive side for `rows` rows; returns where this rank's own
// tokens start in the destination-major send order.
int64_t SizeReceived(DispatchResult* out, int64_t rows, int64_t k, int64_t local_slots, int me) {
  out->recv_rows.resize(rows);
  out->recv_local_slot.resize(rows * k);
  out->recv_weights.resize(rows * k);
  out->num_recv_tokens_per_expert.assign(local_slots, 0);
  int64_t own_begin = 0;
  for (int d = 0; d < me; ++d) own_begin += out->send_tokens[d];
  return own_begin;
}

// Checks a received row's slots (a peer's bug or corrupted memory must not
// index past this rank's experts) and counts them per local expert.
absl::Status CountSlots(const int32_t* slots, int64_t k, int64_t local_slots, int me, int source, DispatchResult* out) {
  for (int64_t j = 0; j < k; ++j) {
    if (slots[j] < -1 || slots[j] >= local_slots) {
      return absl::DataLossError(StrCat("dispatch on rank ", me, ": received slot ", slots[j], " from rank ", source,
                                        ", outside this rank's ", local_slots, " slots"));
    }
    if (slots[j] >= 0) ++out->num_recv_tokens_per_expert[slots[j]];
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view Dispatcher::path() const {
  return path_ == Path::kShared ? "shared memory" : path_ == Path::kCopy ? "all-to-all-v" : "";
}

absl::Status Dispatcher::ChoosePath(transport::Transport& transport, Deadline deadline) {
  if (path_ != Path::kUnchosen) return absl::OkStatus();
  const char* env = std::getenv("MOEX_INTRANODE");
  if (transport.world_size() == 1 || (env != nullptr && std::string_view(env) == "0")) {
    path_ = Path::kCopy;
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<transport::SharedSegments>> shm = transport::SharedSegments::Create(transport, deadline);
  if (shm.ok()) {
    shm_ = std::move(*shm);
    path_ = Path::kShared;
  } else if (absl::IsFailedPrecondition(shm.status())) {
    path_ = Path::kCopy;  // ranks on several hosts
  } else {
    return shm.status();
  }
  return absl::OkStatus();
}

Dispatcher::Areas Dispatcher::AreasOf(const std::vector<int64_t>& counts, int world, int d, int64_t record_bytes,
                                      int64_t hidden) {
  Areas a;
  for (int s = 0; s < world; ++s) a.rows += counts[s * world + d];
  a.partial_offset = (a.rows * record_bytes + 4095) / 4096 * 4096;
  a.bytes = a.partial_offset + a.rows * hidden * static_cast<int64_t>(sizeof(float));
  return a;
}

absl::Status Dispatcher::Dispatch(transport::Transport& transport, const Placement& placement,
                                  const Tensor& x, const DispatchLayout& layout,
                                  const float* topk_weights, Deadline deadline, DispatchResult* out) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t T = layout.num_tokens;
  if (placement.world_size() != world || layout.world_size != world) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": placement for ",
                                             placement.world_size(), " ranks, transport has ", world));
  }
  if (x.shape.size() != 2 || x.dim(0) != T) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": x has shape ",
                                             ShapeString(x.shape), ", the layout has ", T, " tokens"));
  }
  rank_ = me;
  MOEX_RETURN_IF_ERROR(ChoosePath(transport, deadline));
  if (path_ == Path::kShared) return DispatchShared(transport, placement, x, layout, topk_weights, deadline, out);
  return DispatchCopy(transport, placement, x, layout, topk_weights, deadline, out);
}

absl::Status Dispatcher::DispatchShared(transport::Transport& transport, const Placement& placement,
                                        const Tensor& x, const DispatchLayout& layout, const float* topk_weights,
                                        Deadline deadline, DispatchResult* out) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t T = layout.num_tokens, k = layout.top_k, H = x.dim(1), record = RecordFloats(H, k);
  const int64_t record_bytes = record * static_cast<int64_t>(sizeof(float));
  // Every rank learns every count: where its rows go in each receiver's area.
  std::vector<double> mine(layout.num_tokens_per_rank.begin(), layout.num_tokens_per_rank.end()), all(world * world);
  MOEX_RETURN_IF_ERROR(transport.AllGather(mine, all, deadline));
  std::vector<int64_t> counts(all.begin(), all.end());
  std::vector<int64_t> need(world);
  for (int d = 0; d < world; ++d) need[d] = AreasOf(counts, world, d, record_bytes, H).bytes;
  absl::Status reserved = shm_->Reserve(transport, need, deadline);
  if (!reserved.ok()) {
    if (!absl::IsResourceExhausted(reserved)) return reserved;
    // Every rank saw the failure: all go back to the all-to-all-v path.
    if (me == 0) std::fprintf(stderr, "moex: intra-node shared memory off: %s\n", std::string(reserved.message()).c_str());
    shm_.reset();
    path_ = Path::kCopy;
    return DispatchCopy(transport, placement, x, layout, topk_weights, deadline, out);
  }
  out->shared = true;
  out->counts = counts;
  out->hidden = H;
  out->top_k = k;
  out->bytes_sent = 0;
  out->send_tokens = layout.num_tokens_per_rank;
  out->recv_tokens.assign(world, 0);
  for (int s = 0; s < world; ++s) out->recv_tokens[s] = counts[s * world + me];

  // Each record goes straight into its receiver's area, after the rows of
  // the ranks before this one.
  out->send_order.clear();
  for (int d = 0; d < world; ++d) {
    int64_t row = 0;
    for (int s = 0; s < me; ++s) row += counts[s * world + d];
    float* area = reinterpret_cast<float*>(shm_->segment(d));
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * world + d]) continue;
      out->send_order.push_back(t);
      if (d == me) continue;
      float* dst = area + row * record;
      std::memcpy(dst, x.row(t), H * sizeof(float));
      FillPairs(placement, layout, topk_weights, t, d, reinterpret_cast<int32_t*>(dst + H), dst + H + k);
      ++row;
      out->bytes_sent += record_bytes;
    }
  }
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();

  // Rows in source-rank order; the own block is read from x in place.
  const int64_t local_slots = placement.num_local_slots(me);
  const int64_t own_begin =
      SizeReceived(out, AreasOf(counts, world, me, record_bytes, H).rows, k, local_slots, me);
  const float* area = reinterpret_cast<const float*>(shm_->segment(me));
  int64_t i = 0;
  for (int s = 0; s < world; ++s) {
    for (int64_t n = 0; n < counts[s * world + me]; ++n, ++i) {
      int32_t* slots = &out->recv_local_slot[i * k];
      float* weights = &out->recv_weights[i * k];
      if (s == me) {
        int64_t t = out->send_order[own_begin + n];
        out->recv_rows[i] = x.row(t);
        FillPairs(placement, layout, topk_weights, t, me, slots, weights);
      } else {
        const float* in = area + i * record;
        out->recv_rows[i] = in;
        std::memcpy(slots, in + H, k * sizeof(int32_t));
        std::memcpy(weights, in + H + k, k * sizeof(float));
      }
      MOEX_RETURN_IF_ERROR(CountSlots(slots, k, local_slots, me, s, out));
    }
  }
  return absl::OkStatus();
}

float* Dispatcher::PartialBuffer(const DispatchResult& received) {
  const int64_t n = received.num_recv() * received.hidden;
  float* out;
  if (received.shared && shm_ != nullptr) {
    const int world = static_cast<int>(received.recv_tokens.size());
    const int64_t record_bytes = RecordFloats(received.hidden, received.top_k) * static_cast<int64_t>(sizeof(float));
    out = reinterpret_cast<float*>(shm_->segment(rank_) +
                                   AreasOf(received.counts, world, rank_, record_bytes, received.hidden).partial_offset);
  } else {
    if (static_cast<int64_t>(partial_.size()) < n) partial_.resize(n);
    out = partial_.data();
  }
  std::fill(out, out + n, 0.0f);
  return out;
}

absl::Status Dispatcher::CombineShared(transport::Transport& transport, const DispatchResult& received,
                                       const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t H = received.hidden, R = received.num_recv();
  const int64_t record_bytes = RecordFloats(H, received.top_k) * static_cast<int64_t>(sizeof(float));
  const std::vector<int64_t>& counts = received.counts;
  float* own = reinterpret_cast<float*>(shm_->segment(me) + AreasOf(counts, world, me, record_bytes, H).partial_offset);
  if (partial != own) std::memcpy(own, partial, R * H * sizeof(float));
  *bytes_sent = 0;
  for (int s = 0; s < world; ++s) {
    if (s != me) *bytes_sent += counts[s * world + me] * H * static_cast<int64_t>(sizeof(float));
  }
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();
  // Each rank's partial sums for our tokens, read where that rank wrote
  // them; token by token (the output row stays in cache), ranks in order.
  const int64_t T = y->dim(0);
  sources_.assign(T * world, nullptr);
  int64_t order = 0;
  for (int r = 0; r < world; ++r) {
    int64_t first = 0;
    for (int s = 0; s < me; ++s) first += counts[s * world + r];
    const float* base = reinterpret_cast<const float*>(shm_->segment(r) +
                                                       AreasOf(counts, world, r, record_bytes, H).partial_offset) +
                        first * H;
    for (int64_t n = 0; n < counts[me * world + r]; ++n, ++order) {
      sources_[received.send_order[order] * world + r] = base + n * H;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* out = y->row(t);
    for (int r = 0; r < world; ++r) {
      const float* add = sources_[t * world + r];
      if (add == nullptr) continue;
      for (int64_t h = 0; h < H; ++h) out[h] += add[h];
    }
  }
  return absl::OkStatus();
}

absl::Status Dispatcher::DispatchCopy(transport::Transport& transport, const Placement& placement,
                                      const Tensor& x, const DispatchLayout& layout, const float* topk_weights,
                                      Deadline deadline, DispatchResult* out) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t T = layout.num_tokens, k = layout.top_k;
  const int64_t H = x.dim(1), record = RecordFloats(H, k);
  out->shared = false;
  out->counts.clear();
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

  // Pack the blocks for other ranks, destination-major. The own block is not
  // packed: its rows are read from x in place.
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  int64_t packed = 0, remote_recv = 0;
  for (int r = 0; r < world; ++r) {
    if (r == me) continue;
    send_bytes[r] = out->send_tokens[r] * record * static_cast<int64_t>(sizeof(float));
    recv_bytes[r] = out->recv_tokens[r] * record * static_cast<int64_t>(sizeof(float));
    packed += out->send_tokens[r];
    remote_recv += out->recv_tokens[r];
    out->bytes_sent += send_bytes[r];
  }
  if (static_cast<int64_t>(send_.size()) < packed * record) send_.resize(packed * record);
  if (static_cast<int64_t>(recv_.size()) < remote_recv * record) recv_.resize(remote_recv * record);
  out->send_order.clear();
  int64_t row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * world + r]) continue;
      out->send_order.push_back(t);
      if (r == me) continue;
      float* dst = send_.data() + row * record;
      std::memcpy(dst, x.row(t), H * sizeof(float));
      FillPairs(placement, layout, topk_weights, t, r, reinterpret_cast<int32_t*>(dst + H), dst + H + k);
      ++row;
    }
  }
  // The send buffer skips the own block; AllToAllV wants blocks in rank
  // order with the own one empty, which is exactly this layout.
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(send_.data()), send_bytes,
                                           reinterpret_cast<std::byte*>(recv_.data()), recv_bytes,
                                           deadline));

  // Received rows: other ranks' in rank order, where they landed in the
  // receive buffer, then our own, read from x. Keeping the own block last
  // lets combine send the partial sums of the others as they are.
  const int64_t local_slots = placement.num_local_slots(me);
  const int64_t own = out->recv_tokens[me];
  const int64_t total_recv = remote_recv + own;
  const int64_t own_begin = SizeReceived(out, total_recv, k, local_slots, me);
  int source = -1;  // of row i: the other ranks in order, then this one
  int64_t block_end = 0;
  for (int64_t i = 0; i < total_recv; ++i) {
    int32_t* slots = &out->recv_local_slot[i * k];
    float* weights = &out->recv_weights[i * k];
    if (i < remote_recv) {
      while (i >= block_end) {
        ++source;
        if (source != me) block_end += out->recv_tokens[source];
      }
      const float* in = recv_.data() + i * record;
      out->recv_rows[i] = in;
      std::memcpy(slots, in + H, k * sizeof(int32_t));
      std::memcpy(weights, in + H + k, k * sizeof(float));
    } else {
      source = me;
      int64_t t = out->send_order[own_begin + (i - remote_recv)];
      out->recv_rows[i] = x.row(t);
      FillPairs(placement, layout, topk_weights, t, me, slots, weights);
    }
    MOEX_RETURN_IF_ERROR(CountSlots(slots, k, local_slots, me, source, out));
  }
  return absl::OkStatus();
}

absl::Status Dispatcher::Combine(transport::Transport& transport, const DispatchResult& received,
                                 const Tensor& partial, Tensor* y, int64_t* bytes_sent,
                                 Deadline deadline) {
  const int64_t H = received.hidden, R = received.num_recv();
  if (partial.shape.size() != 2 || partial.dim(0) < R || partial.dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("combine on rank ", transport.rank(), ": partial sums have shape ",
                                             ShapeString(partial.shape), ", expected ", ShapeString({R, H})));
  }
  return Combine(transport, received, partial.data(), y, bytes_sent, deadline);
}

absl::Status Dispatcher::Combine(transport::Transport& transport, const DispatchResult& received,
                                 const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int world = transport.world_size(), me = transport.rank();
  const int64_t H = received.hidden, R = received.num_recv();
  if (y->shape.size() != 2 || y->dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("combine on rank ", me, ": the output has shape ", ShapeString(y->shape),
                                             ", expected [tokens, ", H, "]"));
  }
  if (received.shared) return CombineShared(transport, received, partial, y, bytes_sent, deadline);
  // Back the way they came: what came from r returns to r. The partial sums
  // of other ranks' tokens lead, in rank order; our own follow and do not
  // travel.
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  *bytes_sent = 0;
  int64_t back_rows = 0;
  for (int r = 0; r < world; ++r) {
    if (r == me) continue;
    send_bytes[r] = received.recv_tokens[r] * H * static_cast<int64_t>(sizeof(float));
    recv_bytes[r] = received.send_tokens[r] * H * static_cast<int64_t>(sizeof(float));
    back_rows += received.send_tokens[r];
    *bytes_sent += send_bytes[r];
  }
  const int64_t own_partial = R - received.recv_tokens[me];
  if (static_cast<int64_t>(back_.size()) < back_rows * H) back_.resize(back_rows * H);
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(partial), send_bytes,
                                           reinterpret_cast<std::byte*>(back_.data()), recv_bytes, deadline));
  // Add each rank's rows to their tokens, in rank order.
  int64_t order = 0, back_row = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t n = 0; n < received.send_tokens[r]; ++n, ++order) {
      float* out = y->row(received.send_order[order]);
      const float* add = r == me ? partial + (own_partial + n) * H : back_.data() + (back_row++) * H;
      for (int64_t h = 0; h < H; ++h) out[h] += add[h];
    }
  }
  return absl::OkStatus();
}

}  // namespace moex::ep
