#include "moex/balance/migration.h"

#include <chrono>
#include <cstring>
#include <set>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::balance {

absl::StatusOr<Migration> Migration::Plan(const placement::Placement& from, placement::Placement to, int64_t version,
                                          int64_t expert_bytes, int64_t chunk_bytes) {
  if (from.num_experts() != to.num_experts() || from.world_size() != to.world_size()) {
    return absl::InvalidArgumentError(StrCat("placement version ", version, " is for ", to.num_experts(), " experts on ",
                                             to.world_size(), " ranks; the job runs ", from.num_experts(), " on ",
                                             from.world_size()));
  }
  Migration m(std::move(to), version);
  m.expert_bytes_ = expert_bytes;
  const placement::Placement& next = m.next_;
  for (int rank = 0; rank < next.world_size(); ++rank) {
    std::set<int64_t> held, needed;
    for (int64_t s = 0; s < from.num_local_slots(rank); ++s) held.insert(from.slot_expert(from.first_slot(rank) + s));
    for (int64_t s = 0; s < next.num_local_slots(rank); ++s) needed.insert(next.slot_expert(next.first_slot(rank) + s));
    for (int64_t e : needed) {
      if (held.count(e)) continue;
      // The replicas share the sending, deterministically.
      const std::vector<int64_t>& sources = from.expert_slots(e);
      int source = from.slot_rank(sources[static_cast<size_t>(e + rank) % sources.size()]);
      m.transfers_.push_back({.expert = e, .from = source, .to = rank});
    }
  }
  int64_t budget = 0;
  for (size_t i = 0; i < m.transfers_.size(); ++i) {
    if (m.chunks_.empty() || budget + expert_bytes > chunk_bytes) {
      m.chunks_.emplace_back();
      budget = 0;
    }
    m.chunks_.back().push_back(i);
    budget += expert_bytes;
  }
  return m;
}

absl::Status Migration::RunChunk(transport::Transport& t, const ep::Layer& current, Deadline deadline,
                                 MigrationStats* stats) {
  if (done()) return absl::FailedPreconditionError("the migration has no chunk left");
  const auto start = std::chrono::steady_clock::now();
  const int rank = t.rank(), world = t.world_size();
  // Experts travel in the dtype they are held in: their stored bytes.
  const WeightFormat format = current.ExpertFormat();
  const int64_t expert_bytes = ep::ExpertBytes(current.spec(), format);
  const std::vector<size_t>& chunk = chunks_[next_chunk_];
  // Blocks destination by destination, transfers in plan order within each.
  std::vector<int64_t> send_bytes(world, 0), recv_bytes(world, 0);
  for (size_t i : chunk) {
    const ExpertTransfer& x = transfers_[i];
    if (x.from == rank) send_bytes[x.to] += expert_bytes;
    if (x.to == rank) recv_bytes[x.from] += expert_bytes;
  }
  int64_t send_total = 0, recv_total = 0;
  std::vector<int64_t> send_offset(world), recv_offset(world);
  for (int r = 0; r < world; ++r) {
    send_offset[r] = send_total;
    recv_offset[r] = recv_total;
    send_total += send_bytes[r];
    recv_total += recv_bytes[r];
  }
  send_.resize(send_total);
  recv_.resize(recv_total);
  for (size_t i : chunk) {
    const ExpertTransfer& x = transfers_[i];
    if (x.from != rank) continue;
    const ep::ExpertWeights* held = current.HeldExpert(x.expert);
    if (held == nullptr) {
      return absl::InternalError(StrCat("rank ", rank, " must send expert ", x.expert, " to rank ", x.to,
                                        " for placement version ", version_, " but does not hold it"));
    }
    if (held->bytes() != expert_bytes) {
      return absl::InternalError(StrCat("rank ", rank, ": expert ", x.expert, " is ", held->bytes(), " bytes (",
                                        WeightFormatName(held->format()), "), its layer's experts ", expert_bytes,
                                        " (", WeightFormatName(format), ")"));
    }
    held->CopyBytes(&send_[send_offset[x.to]]);
    send_offset[x.to] += expert_bytes;
  }
  absl::Status sent = t.AllToAllV(send_.data(), send_bytes, recv_.data(), recv_bytes, deadline);
  if (!sent.ok()) {
    return absl::Status(sent.code(), StrCat("migrating experts to placement version ", version_, " (chunk ",
                                            next_chunk_ + 1, " of ", num_chunks(), "): ", sent.message()));
  }
  for (size_t i : chunk) {
    const ExpertTransfer& x = transfers_[i];
    if (x.to != rank) continue;
    received_[x.expert] = ep::ExpertWeights::FromBytes(current.spec(), format, &recv_[recv_offset[x.from]]);
    recv_offset[x.from] += expert_bytes;
    ++stats->experts_received;
  }
  for (int r = 0; r < world; ++r) {
    if (r != rank) stats->bytes_sent += send_bytes[r];
  }
  ++next_chunk_;
  stats->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return absl::OkStatus();
}

}  // namespace moex::balance
