// The hierarchical (node-aware) path, as DeepEP's internode kernels: a
// token crosses the network to a remote host once, however many of that
// host's ranks and experts it chose, and is forwarded inside the host
// through shared memory; in combine, the host's partial sums of it are added
// up there and one row per (token, host) goes back.
//
// Each rank sends its tokens for host h to one rank of h, its gateway there
// (GatewayOf: the rank of h whose local index is the sender's, modulo h's
// size, so that a host's ranks share the network work). A network record is
// the token's row and its k (global slot, weight) pairs for that host (slot
// -1 where another host serves the pair).
//
// A rank's *items* are what it forwards into its host: its own tokens and the
// rows that came to it as a gateway, ordered by the rank they came from (its
// own at its own position), each rank's in its token order. Items go to the
// host's ranks through shared memory exactly as the shared-memory path sends
// tokens (dispatch_shared.cc's segment layout, AreasOf), with pairs local to
// the receiver; a receiver's rows are therefore gateway-major.
//
// Every count is known to every rank from one all-gather per dispatch: each
// rank's tokens per destination rank and per remote host. From them the
// sizes of every area, so that shared memory is reserved (or found unable to
// grow, every rank alike) before anything crosses the network.
//
// Barriers are over the world, as on the per-peer path (see
// dispatch_shared.cc); the network exchange is the transport's all-to-all-v
// with empty blocks between the ranks of a host.
#include <cmath>
#include <cstring>
#include <span>
#include <string>

#include "dispatch_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"

namespace moex::ep {

using dispatch_internal::AreasOf;
using dispatch_internal::CountSlots;
using dispatch_internal::FillPairs;
using dispatch_internal::RecordBytes;
using dispatch_internal::RecordFloats;
using dispatch_internal::TakeRecord;
using dispatch_internal::WireRecordBytes;

int Dispatcher::GatewayOf(int source, int host) const {
  if (host_of_[source] == host) return source;
  const std::vector<int>& ranks = host_ranks_[host];
  return ranks[local_index_[source] % static_cast<int>(ranks.size())];
}

absl::Status Dispatcher::DispatchHierarchical(transport::Transport& transport, const Placement& placement,
                                              const Tensor& x, const DispatchLayout& layout,
                                              const float* topk_weights, Deadline deadline, DispatchResult* out) {
  const int world = world_size_, me = rank_, hosts = num_hosts_, my_host = host_of_[me];
  const int64_t T = layout.num_tokens, k = layout.top_k, H = x.dim(1), record = RecordFloats(H, k);
  const int64_t record_bytes = RecordBytes(H, k);
  const std::vector<int>& host_ranks = host_ranks_[my_host];

  // Which remote hosts each token chose, and how many tokens go to each.
  std::vector<uint8_t> to_host(T * hosts, 0);
  const int fields = world + hosts;
  std::vector<double> mine(fields, 0.0), all(static_cast<size_t>(fields) * world);
  for (int d = 0; d < world; ++d) mine[d] = static_cast<double>(layout.num_tokens_per_rank[d]);
  for (int64_t t = 0; t < T; ++t) {
    for (int d = 0; d < world; ++d) {
      const int h = host_of_[d];
      if (h == my_host || !layout.is_token_in_rank[t * world + d] || to_host[t * hosts + h]) continue;
      to_host[t * hosts + h] = 1;
      mine[world + h] += 1;
    }
  }
  MOEX_RETURN_IF_ERROR(transport.AllGather(mine, all, deadline));
  // Every rank holds the same counts: a corrupt one fails every rank alike,
  // before any size is computed from it.
  for (size_t i = 0; i < all.size(); ++i) {
    if (!(all[i] >= 0 && all[i] < 2147483648.0) || all[i] != std::floor(all[i])) {
      return absl::DataLossError(StrCat("dispatch on rank ", me, ": rank ", i / fields, " announced a count of ",
                                        all[i], ", not a token count"));
    }
  }
  auto tokens_to_rank = [&](int s, int d) { return static_cast<int64_t>(all[s * fields + d]); };
  auto tokens_to_host = [&](int s, int h) { return static_cast<int64_t>(all[s * fields + world + h]); };

  // counts[g * W + d]: items gateway g forwards to d (both on one host): the
  // tokens of every rank whose gateway on that host is g, for d.
  std::vector<int64_t> counts(static_cast<size_t>(world) * world, 0);
  for (int s = 0; s < world; ++s) {
    for (int h = 0; h < hosts; ++h) {
      const int g = GatewayOf(s, h);
      for (int d : host_ranks_[h]) counts[g * world + d] += tokens_to_rank(s, d);
    }
  }
  std::vector<int64_t> need(world);
  for (int d = 0; d < world; ++d) need[d] = AreasOf(counts, host_of_, d, record_bytes, H).bytes;
  MOEX_ASSIGN_OR_RETURN(bool reserved, ReserveSegments(transport, need, deadline));
  if (!reserved) return DispatchAllToAllV(transport, placement, x, layout, topk_weights, deadline, out);

  out->path = path_;
  out->num_tokens = T;
  out->hidden = H;
  out->top_k = k;
  out->bytes_sent = 0;
  out->internode_bytes_sent = 0;
  out->send_order.clear();
  out->send_tokens.assign(world, 0);
  out->recv_tokens.assign(world, 0);
  out->net_send_tokens.assign(world, 0);
  out->net_recv_tokens.assign(world, 0);
  for (int r : host_ranks) {
    out->send_tokens[r] = counts[me * world + r];
    out->recv_tokens[r] = counts[r * world + me];
  }
  int64_t net_sent = 0, forwarded = 0;
  for (int h = 0; h < hosts; ++h) {
    if (h == my_host) continue;
    out->net_send_tokens[GatewayOf(me, h)] = tokens_to_host(me, h);
    net_sent += tokens_to_host(me, h);
  }
  for (int s = 0; s < world; ++s) {
    if (host_of_[s] != my_host && GatewayOf(s, my_host) == me) {
      out->net_recv_tokens[s] = tokens_to_host(s, my_host);
      forwarded += out->net_recv_tokens[s];
    }
  }
  out->counts = std::move(counts);

  // The network hop: a record per (token, remote host), gateway-major, in
  // the wire dtype; read back as fp32 records in recv_.
  const int64_t wire = WireRecordBytes(options_.dtype, H, k), wire_row = WireRowBytes(options_.dtype, H);
  if (static_cast<int64_t>(send_.size()) < net_sent * wire / 4) send_.resize(net_sent * wire / 4);
  std::byte* const send = reinterpret_cast<std::byte*>(send_.data());
  std::byte* const land = WireReceiveBuffer(forwarded, H, k);
  out->net_send_order.clear();
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  for (int g = 0; g < world; ++g) {
    send_bytes[g] = out->net_send_tokens[g] * wire;
    recv_bytes[g] = out->net_recv_tokens[g] * wire;
    if (out->net_send_tokens[g] == 0) continue;
    const int h = host_of_[g];
    for (int64_t t = 0; t < T; ++t) {
      if (!to_host[t * hosts + h]) continue;
      std::byte* dst = send + static_cast<int64_t>(out->net_send_order.size()) * wire;
      out->net_send_order.push_back(t);
      WriteWireRow(x, t, dst);
      float* pairs = reinterpret_cast<float*>(dst + wire_row);
      int32_t* slots = reinterpret_cast<int32_t*>(pairs);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t slot = layout.topk_slot[t * k + j];
        const bool there = host_of_[placement.slot_rank(slot)] == h;
        slots[j] = there ? static_cast<int32_t>(slot) : -1;
        pairs[k + j] = there ? topk_weights[t * k + j] : 0.0f;
      }
    }
  }
  out->internode_bytes_sent = net_sent * wire;
  out->bytes_sent += out->internode_bytes_sent;
  if (several_hosts_) {
    MOEX_RETURN_IF_ERROR(transport.AllToAllV(send, send_bytes, land, recv_bytes, deadline));
    DecodeWireRecords(forwarded, H, k);
  }

  // The forwarded rows' pairs name global slots of this host, and each
  // sender's rows for each rank of this host are as many as it announced
  // (the areas were sized from that): a peer's bug, corrupted bytes or a
  // different placement must not write past a block. Every rank learns
  // whether any found one, so that all fail together, before any write.
  std::vector<int> forwarded_from(forwarded);
  std::string bad;
  std::vector<int64_t> seen(world);
  for (int s = 0, f = 0; s < world && bad.empty(); ++s) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t n = 0; n < out->net_recv_tokens[s] && bad.empty(); ++n, ++f) {
      forwarded_from[f] = s;
      const int32_t* slots = reinterpret_cast<const int32_t*>(recv_.data() + f * record + H);
      for (int d : host_ranks) {
        bool chose = false;
        for (int64_t j = 0; j < k; ++j) chose |= slots[j] >= 0 && slots[j] < placement.num_slots() &&
                                                 placement.slot_rank(slots[j]) == d;
        seen[d] += chose;
      }
      for (int64_t j = 0; j < k && bad.empty(); ++j) {
        if (slots[j] == -1) continue;
        if (slots[j] < 0 || slots[j] >= placement.num_slots() || host_of_[placement.slot_rank(slots[j])] != my_host) {
          bad = StrCat("received slot ", slots[j], " from rank ", s, " to forward, not a slot of this host's ranks");
        }
      }
    }
    for (int d : host_ranks) {
      const bool through_me = host_of_[s] != my_host && GatewayOf(s, my_host) == me;
      if (bad.empty() && through_me && seen[d] != tokens_to_rank(s, d)) {
        bad = StrCat("rank ", s, " sent ", seen[d], " rows for rank ", d, " to forward, having announced ",
                     tokens_to_rank(s, d), " (do the ranks hold the same placement?)");
      }
    }
  }
  std::vector<int64_t> failed(world, 0);
  failed[me] = bad.empty() ? 0 : 1;
  MOEX_RETURN_IF_ERROR(transport.AllReduceSum(std::span<int64_t>(failed), deadline));
  if (!bad.empty()) return absl::DataLossError(StrCat("dispatch on rank ", me, ": ", bad));
  for (int r = 0; r < world; ++r) {
    if (failed[r] != 0) {
      return absl::DataLossError(StrCat("dispatch on rank ", me, ": rank ", r, " received rows it cannot forward "
                                        "(rank ", r, " says why)"));
    }
  }

  // Items into the host: for each receiver d of this host, in order, this
  // rank's items that chose d, as records in d's area (after those of the
  // host's gateways before this one); d == me keeps them where they are.
  // Item i < T is own token i; T + f is forwarded row f.
  auto item_pairs = [&](int64_t item, int d, int32_t* slots, float* weights) {
    if (item < T) {
      FillPairs(placement, layout, topk_weights, item, d, slots, weights);
      return;
    }
    const float* in = recv_.data() + (item - T) * record;
    const int32_t* global = reinterpret_cast<const int32_t*>(in + H);
    for (int64_t j = 0; j < k; ++j) {
      const bool here = global[j] >= 0 && placement.slot_rank(global[j]) == d;
      slots[j] = here ? static_cast<int32_t>(global[j] - placement.first_slot(d)) : -1;
      weights[j] = here ? in[H + k + j] : 0.0f;
    }
  };
  auto goes_to = [&](int64_t item, int d) {
    if (item < T) return layout.is_token_in_rank[item * world + d] != 0;
    const int32_t* global = reinterpret_cast<const int32_t*>(recv_.data() + (item - T) * record + H);
    for (int64_t j = 0; j < k; ++j) {
      if (global[j] >= 0 && placement.slot_rank(global[j]) == d) return true;
    }
    return false;
  };
  // The items in order: by the rank they came from, own tokens at `me`.
  std::vector<int64_t> items;
  items.reserve(T + forwarded);
  for (int s = 0, f = 0; s < world; ++s) {
    if (s == me) {
      for (int64_t t = 0; t < T; ++t) items.push_back(t);
    }
    for (int64_t n = 0; n < out->net_recv_tokens[s]; ++n) items.push_back(T + f++);
  }
  out->item_order.clear();
  for (int d : host_ranks) {
    int64_t row = 0;
    for (int g : host_ranks) row += g < me ? out->counts[g * world + d] : 0;
    float* area = reinterpret_cast<float*>(shm_->segment(d));
    const size_t first = out->item_order.size();
    const int64_t end = row + out->send_tokens[d];  // this rank's block in d's area
    for (int64_t item : items) {
      if (!goes_to(item, d)) continue;
      out->item_order.push_back(item);
      if (d == me) continue;
      if (row >= end) break;  // checked above; never past the block
      float* dst = area + (row++) * record;
      std::memcpy(dst, item < T ? x.row(item) : recv_.data() + (item - T) * record, H * sizeof(float));
      item_pairs(item, d, reinterpret_cast<int32_t*>(dst + H), dst + H + k);
      out->bytes_sent += record_bytes;
    }
    if (static_cast<int64_t>(out->item_order.size() - first) != out->send_tokens[d]) {
      return absl::InternalError(StrCat("dispatch on rank ", me, ": ", out->item_order.size() - first,
                                        " rows for rank ", d, ", the counts say ", out->send_tokens[d]));
    }
  }
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();

  // Received rows, gateway-major: this rank's own items where they are,
  // the other gateways' records where they were written.
  const int64_t rows = AreasOf(out->counts, host_of_, me, record_bytes, H).partial_rows;
  const int64_t local_slots = placement.num_local_slots(me);
  out->recv_rows.resize(rows);
  out->recv_local_slot.resize(rows * k);
  out->recv_weights.resize(rows * k);
  out->num_recv_tokens_per_expert.assign(local_slots, 0);
  int64_t own_first = 0;  // this rank's rows to itself in item_order
  for (int d : host_ranks) {
    if (d == me) break;
    own_first += out->send_tokens[d];
  }
  const float* area = reinterpret_cast<const float*>(shm_->segment(me));
  int64_t i = 0, area_row = 0;
  for (int g : host_ranks) {
    for (int64_t n = 0; n < out->recv_tokens[g]; ++n, ++i) {
      int32_t* slots = &out->recv_local_slot[i * k];
      float* weights = &out->recv_weights[i * k];
      int source = g;
      if (g == me) {
        const int64_t item = out->item_order[own_first + n];
        out->recv_rows[i] = item < T ? x.row(item) : recv_.data() + (item - T) * record;
        item_pairs(item, me, slots, weights);
        if (item >= T) source = forwarded_from[item - T];
      } else {
        TakeRecord(area + (area_row + n) * record, H, k, i, out, slots, weights);
      }
      MOEX_RETURN_IF_ERROR(CountSlots(slots, k, local_slots, me, source, out));
    }
    area_row += out->recv_tokens[g];  // the own block's place is left unused
  }
  return absl::OkStatus();
}

absl::Status Dispatcher::CombineHierarchical(transport::Transport& transport, const DispatchResult& received,
                                             const float* partial, Tensor* y, int64_t* bytes_sent,
                                             Deadline deadline) {
  const int world = world_size_, me = rank_;
  const int64_t H = received.hidden, R = received.num_recv(), T = received.num_tokens;
  const int64_t row_bytes = H * static_cast<int64_t>(sizeof(float));
  const int64_t record_bytes = RecordBytes(H, received.top_k);
  const std::vector<int64_t>& counts = received.counts;
  const std::vector<int>& host_ranks = host_ranks_[host_of_[me]];
  float* own = SharedPartialArea(received);
  if (partial != own && R > 0) std::memcpy(own, partial, R * H * sizeof(float));
  int64_t forwarded = 0;
  for (int s = 0; s < world; ++s) forwarded += received.net_recv_tokens[s];
  *bytes_sent = (R - received.recv_tokens[me] + forwarded) * row_bytes;
  combine_internode_bytes_ = forwarded * row_bytes;
  transport::SharedSegments::Fence();
  MOEX_RETURN_IF_ERROR(transport.Barrier(deadline));
  transport::SharedSegments::Fence();

  // The host's partial sums of each item, read where each receiver's experts
  // wrote them, receivers in rank order: own tokens add into y, forwarded
  // rows into their host sum.
  if (static_cast<int64_t>(forward_sums_.size()) < forwarded * H) forward_sums_.resize(forwarded * H);
  std::fill(forward_sums_.begin(), forward_sums_.begin() + forwarded * H, 0.0f);
  int64_t sent = 0;
  for (int d : host_ranks) {
    int64_t first = 0;
    for (int g : host_ranks) first += g < me ? counts[g * world + d] : 0;
    const float* base = reinterpret_cast<const float*>(
                            shm_->segment(d) + AreasOf(counts, host_of_, d, record_bytes, H).partial_offset) +
                        first * H;
    for (int64_t n = 0; n < received.send_tokens[d]; ++n) {
      const int64_t item = received.item_order[sent++];
      float* out = item < T ? y->row(item) : forward_sums_.data() + (item - T) * H;
      const float* add = base + n * H;
      for (int64_t h = 0; h < H; ++h) out[h] += add[h];
    }
  }
  // One row per (token, host) back over the network; each gateway's rows
  // land in the order its tokens were sent, gateways in rank order.
  if (several_hosts_) {
    std::vector<int64_t> send(world), recv(world);
    int64_t back_rows = 0;
    for (int r = 0; r < world; ++r) {
      send[r] = received.net_recv_tokens[r] * row_bytes;
      recv[r] = received.net_send_tokens[r] * row_bytes;
      back_rows += received.net_send_tokens[r];
    }
    if (static_cast<int64_t>(back_.size()) < back_rows * H) back_.resize(back_rows * H);
    MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(forward_sums_.data()), send,
                                             reinterpret_cast<std::byte*>(back_.data()), recv, deadline));
    for (int64_t n = 0; n < back_rows; ++n) {
      float* out = y->row(received.net_send_order[n]);
      const float* add = back_.data() + n * H;
      for (int64_t h = 0; h < H; ++h) out[h] += add[h];
    }
  }
  return absl::OkStatus();
}

}  // namespace moex::ep
