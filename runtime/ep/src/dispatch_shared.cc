// The paths through shared segments: shared memory (every rank on one
// host) and per peer (shared memory within a host, all-to-all-v between
// hosts). One implementation: shared memory is per peer with one host, and
// then the all-to-all-v is left out (every rank knows it is).
//
// Every rank of a host maps every other one's segment. Rank d's segment
// holds its receive area (one record per row it receives from a rank of
// its host, source-rank-major, the own block's records unused) and, after
// it on a page boundary, its partial-sum area (one row of H floats per
// received row, from every rank, in received order). Senders of d's host
// write records straight into d's area; home ranks of d's host read partial
// sums straight out of it. Rows from and to other hosts are packed and go
// through the transport's all-to-all-v, whose blocks for the ranks of this
// host are empty; their partial sums are sent out of the partial-sum area,
// in place.
//
// Two barriers order it, over every rank of the transport (also on the
// per-peer path, where only a host's ranks touch each other's segments: a
// barrier over the host's ranks alone would do, and is a later
// optimisation; the world's is simple and correct). The counts all-gather
// at the start of each dispatch keeps a rank from writing into a segment
// that a slower rank of its host is still reading from the last combine.
#include <cstring>

#include "dispatch_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {

using dispatch_internal::AreasOf;
using dispatch_internal::FillPairs;
using dispatch_internal::FillReceived;
using dispatch_internal::RecordBytes;
using dispatch_internal::RecordFloats;
using dispatch_internal::SizeReceived;
using dispatch_internal::WireRecordBytes;

float* Dispatcher::SharedPartialArea(const DispatchResult& received) const {
  const int64_t record_bytes = RecordBytes(received.hidden, received.top_k);
  return reinterpret_cast<float*>(
      shm_->segment(rank_) + AreasOf(received.counts, host_of_, rank_, record_bytes, received.hidden).partial_offset);
}

absl::Status Dispatcher::DispatchSegments(transport::Transport& transport, const Placement& placement,
                                          const Tensor& x, const DispatchLayout& layout, const float* topk_weights,
                                          Deadline deadline, DispatchResult* out) {
  const int world = world_size_, me = rank_;
  const int64_t T = layout.num_tokens, k = layout.top_k, H = x.dim(1), record = RecordFloats(H, k);
  const int64_t record_bytes = RecordBytes(H, k);
  auto local = [&](int r) { return host_of_[r] == host_of_[me]; };
  // Every rank learns every count: where its rows go in each receiver's
  // area, and how many rows the all-to-all-v carries each way.
  std::vector<double> mine(layout.num_tokens_per_rank.begin(), layout.num_tokens_per_rank.end()), all(world * world);
  MOEX_RETURN_IF_ERROR(transport.AllGather(mine, all, deadline));
  std::vector<int64_t> counts(all.begin(), all.end());
  std::vector<int64_t> need(world);
  for (int d = 0; d < world; ++d) need[d] = AreasOf(counts, host_of_, d, record_bytes, H).bytes;
  MOEX_ASSIGN_OR_RETURN(bool reserved, ReserveSegments(transport, need, deadline));
  if (!reserved) return DispatchAllToAllV(transport, placement, x, layout, topk_weights, deadline, out);
  out->path = path_;
  out->counts = std::move(counts);
  out->num_tokens = T;
  out->hidden = H;
  out->top_k = k;
  out->bytes_sent = 0;
  out->send_tokens = layout.num_tokens_per_rank;
  out->recv_tokens.assign(world, 0);
  for (int s = 0; s < world; ++s) out->recv_tokens[s] = out->counts[s * world + me];

  // What goes by all-to-all-v: the blocks of the ranks on other hosts, in
  // the wire dtype.
  const int64_t wire = WireRecordBytes(options_.dtype, H, k), wire_row = WireRowBytes(options_.dtype, H);
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  int64_t packed = 0, remote_recv = 0;
  for (int r = 0; r < world; ++r) {
    if (local(r)) continue;
    send_bytes[r] = out->send_tokens[r] * wire;
    recv_bytes[r] = out->recv_tokens[r] * wire;
    packed += out->send_tokens[r];
    remote_recv += out->recv_tokens[r];
  }
  if (static_cast<int64_t>(send_.size()) < packed * wire / 4) send_.resize(packed * wire / 4);
  std::byte* const send = reinterpret_cast<std::byte*>(send_.data());

  // Each record for this host goes straight into its receiver's area,
  // after the rows of the host's ranks before this one; each for another
  // host into the send buffer, destination-major.
  out->send_order.clear();
  int64_t packed_row = 0;
  for (int d = 0; d < world; ++d) {
    int64_t row = 0;
    float* area = nullptr;
    if (local(d)) {
      for (int s = 0; s < me; ++s) row += local(s) ? out->counts[s * world + d] : 0;
      area = reinterpret_cast<float*>(shm_->segment(d));
    }
    for (int64_t t = 0; t < T; ++t) {
      if (!layout.is_token_in_rank[t * world + d]) continue;
      out->send_order.push_back(t);
      if (d == me) continue;
      float* pairs;
      if (area != nullptr) {
        float* dst = area + (row++) * record;
        std::memcpy(dst, x.row(t), H * sizeof(float));
        pairs = dst + H;
        out->bytes_sent += record_bytes;
      } else {
        std::byte* dst = send + (packed_row++) * wire;
        WriteWireRow(x, t, dst);
        pairs = reinterpret_cast<float*>(dst + wire_row);
        out->bytes_sent += wire;
      }
      FillPairs(placement, layout, topk_weights, t, d, reinterpret_cast<int32_t*>(pairs), pairs + k);
    }
  }
  if (several_hosts_) {
    MOEX_RETURN_IF_ERROR(
        transport.AllToAllV(send, send_bytes, WireReceiveBuffer(remote_recv, H, k), recv_bytes, deadline));
    DecodeWireRecords(remote_recv, H, k);
  }
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();

  // Rows in source-rank order: this host's read where they were written
  // (the own block from x in place), other hosts' where they landed.
  const int64_t own_begin = SizeReceived(out, AreasOf(out->counts, host_of_, me, record_bytes, H).partial_rows, k,
                                         placement.num_local_slots(me), me);
  // This host's ranks' records lie in our area in rank order (the own
  // block's place unused); other hosts' back to back in the receive buffer.
  const float* area = reinterpret_cast<const float*>(shm_->segment(me));
  std::vector<const float*> first_record(world, nullptr);
  int64_t area_row = 0, landed = 0;
  for (int s = 0; s < world; ++s) {
    if (local(s)) {
      first_record[s] = area + area_row * record;
      area_row += out->recv_tokens[s];
    } else {
      first_record[s] = recv_.data() + landed * record;
      landed += out->recv_tokens[s];
    }
  }
  first_record[me] = nullptr;
  return FillReceived(placement, layout, x, topk_weights, me, own_begin, first_record, record, out);
}

absl::Status Dispatcher::CombineSegments(transport::Transport& transport, const DispatchResult& received,
                                         const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int world = world_size_, me = rank_;
  const int64_t H = received.hidden, R = received.num_recv(), row_bytes = H * static_cast<int64_t>(sizeof(float));
  const int64_t record_bytes = RecordBytes(H, received.top_k);
  const std::vector<int64_t>& counts = received.counts;
  auto local = [&](int r) { return host_of_[r] == host_of_[me]; };
  float* own = SharedPartialArea(received);
  // No rows: the pointers may be null, which memcpy may not be given.
  if (partial != own && R > 0) std::memcpy(own, partial, R * H * sizeof(float));
  *bytes_sent = 0;
  for (int s = 0; s < world; ++s) {
    if (s != me) *bytes_sent += counts[s * world + me] * row_bytes;
  }
  // Other hosts' partial sums go back by all-to-all-v, out of the partial
  // area in place, and land in `back_` in rank order.
  if (several_hosts_) {
    MOEX_RETURN_IF_ERROR(
        ReturnPartials(transport, received, own, [&](int r) { return !local(r); }, deadline).status());
  }
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();
  // Each rank's partial sums for our tokens: this host's read where that
  // rank wrote them, other hosts' where they landed; token by token (the
  // output row stays in cache), ranks in order.
  const int64_t T = y->dim(0);
  sources_.assign(T * world, nullptr);
  int64_t order = 0, back_row = 0;
  for (int r = 0; r < world; ++r) {
    const float* base;
    if (local(r)) {
      int64_t first = 0;
      for (int s = 0; s < me; ++s) first += counts[s * world + r];
      base = reinterpret_cast<const float*>(shm_->segment(r) +
                                            AreasOf(counts, host_of_, r, record_bytes, H).partial_offset) +
             first * H;
    } else {
      base = back_.data() + back_row * H;
      back_row += counts[me * world + r];
    }
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
