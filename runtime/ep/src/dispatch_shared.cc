// The shared-memory path: every rank of the host maps every other rank's
// segment. Rank d's segment holds its receive area (one record per row it
// receives, source-rank-major, the own block's records unused) and, after
// it on a page boundary, its partial-sum area (one row of H floats per
// received row, in the same order). Senders write records straight into
// the receiver's area; home ranks read partial sums straight out of the
// expert's; two barriers order it.
#include <cstring>

#include "dispatch_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {
namespace {

using dispatch_internal::CountSlots;
using dispatch_internal::FillPairs;
using dispatch_internal::RecordBytes;
using dispatch_internal::RecordFloats;
using dispatch_internal::SizeReceived;
using dispatch_internal::TakeRecord;

// Rank d's receive area (rows x record) and partial-sum area, from the
// counts every rank knows.
struct Areas {
  int64_t rows = 0, partial_offset = 0, bytes = 0;
};

Areas AreasOf(const std::vector<int64_t>& counts, int world, int d, int64_t record_bytes, int64_t hidden) {
  Areas a;
  for (int s = 0; s < world; ++s) a.rows += counts[s * world + d];
  a.partial_offset = (a.rows * record_bytes + 4095) / 4096 * 4096;
  a.bytes = a.partial_offset + a.rows * hidden * static_cast<int64_t>(sizeof(float));
  return a;
}

}  // namespace

float* Dispatcher::SharedPartialArea(const DispatchResult& received) const {
  const int64_t record_bytes = RecordBytes(received.hidden, received.top_k);
  return reinterpret_cast<float*>(
      shm_->segment(rank_) + AreasOf(received.counts, world_size_, rank_, record_bytes, received.hidden).partial_offset);
}

absl::Status Dispatcher::DispatchShared(transport::Transport& transport, const Placement& placement,
                                        const Tensor& x, const DispatchLayout& layout, const float* topk_weights,
                                        Deadline deadline, DispatchResult* out) {
  const int world = world_size_, me = rank_;
  const int64_t T = layout.num_tokens, k = layout.top_k, H = x.dim(1), record = RecordFloats(H, k);
  const int64_t record_bytes = RecordBytes(H, k);
  // Every rank learns every count: where its rows go in each receiver's area.
  std::vector<double> mine(layout.num_tokens_per_rank.begin(), layout.num_tokens_per_rank.end()), all(world * world);
  MOEX_RETURN_IF_ERROR(transport.AllGather(mine, all, deadline));
  std::vector<int64_t> counts(all.begin(), all.end());
  std::vector<int64_t> need(world);
  for (int d = 0; d < world; ++d) need[d] = AreasOf(counts, world, d, record_bytes, H).bytes;
  absl::Status reserved = shm_->Reserve(transport, need, deadline);
  if (!reserved.ok()) {
    // Every rank saw the same failure: all leave together, or all fail.
    MOEX_RETURN_IF_ERROR(LeaveSharedMemory(reserved, dispatches_));
    return DispatchAllToAllV(transport, placement, x, layout, topk_weights, deadline, out);
  }
  out->path = DispatchPath::kSharedMemory;
  out->counts = std::move(counts);
  out->num_tokens = T;
  out->hidden = H;
  out->top_k = k;
  out->bytes_sent = 0;
  out->send_tokens = layout.num_tokens_per_rank;
  out->recv_tokens.assign(world, 0);
  for (int s = 0; s < world; ++s) out->recv_tokens[s] = out->counts[s * world + me];

  // Each record goes straight into its receiver's area, after the rows of
  // the ranks before this one.
  out->send_order.clear();
  for (int d = 0; d < world; ++d) {
    int64_t row = 0;
    for (int s = 0; s < me; ++s) row += out->counts[s * world + d];
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
      SizeReceived(out, AreasOf(out->counts, world, me, record_bytes, H).rows, k, local_slots, me);
  const float* area = reinterpret_cast<const float*>(shm_->segment(me));
  int64_t i = 0;
  for (int s = 0; s < world; ++s) {
    for (int64_t n = 0; n < out->recv_tokens[s]; ++n, ++i) {
      int32_t* slots = &out->recv_local_slot[i * k];
      float* weights = &out->recv_weights[i * k];
      if (s == me) {
        int64_t t = out->send_order[own_begin + n];
        out->recv_rows[i] = x.row(t);
        FillPairs(placement, layout, topk_weights, t, me, slots, weights);
      } else {
        TakeRecord(area + i * record, H, k, i, out, slots, weights);
      }
      MOEX_RETURN_IF_ERROR(CountSlots(slots, k, local_slots, me, s, out));
    }
  }
  return absl::OkStatus();
}

absl::Status Dispatcher::CombineShared(transport::Transport& transport, const DispatchResult& received,
                                       const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int world = world_size_, me = rank_;
  const int64_t H = received.hidden, R = received.num_recv();
  const int64_t record_bytes = RecordBytes(H, received.top_k);
  const std::vector<int64_t>& counts = received.counts;
  float* own = SharedPartialArea(received);
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

}  // namespace moex::ep
