#include "moex/transport/transport.h"

#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include <optional>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/core/status_macros.h"
#include "moex/core/stop.h"
#include "moex/core/str_cat.h"

namespace moex::transport {

namespace {
constexpr char kMissingRanks[] = "moex/missing-ranks";

absl::Status WithMissingRanks(absl::Status status, const std::vector<int>& ranks) {
  status.SetPayload(kMissingRanks, absl::Cord(absl::StrJoin(ranks, ",")));
  return status;
}
}  // namespace

std::vector<int> MissingRanks(const absl::Status& status) {
  std::vector<int> out;
  const auto payload = status.GetPayload(kMissingRanks);
  if (!payload) return out;
  for (absl::string_view part : absl::StrSplit(std::string(*payload), ',', absl::SkipEmpty())) {
    int rank = 0;
    if (absl::SimpleAtoi(part, &rank)) out.push_back(rank);
  }
  return out;
}

absl::Status Transport::Fail(absl::Status status) {
  if (failure_.ok()) failure_ = status;
  return status;
}

absl::Status Transport::Start(std::string_view what) {
  if (!failure_.ok()) {
    return absl::FailedPreconditionError(StrCat(name(), " transport, rank ", rank_, ": ", what,
                                                " refused: the transport failed earlier: ",
                                                failure_.message()));
  }
  return absl::OkStatus();
}

absl::Status Transport::Posted(absl::StatusOr<RequestId> id, int peer, std::string_view what,
                              std::vector<Pending>& pending) {
  if (id.ok()) {
    pending.push_back({*id, peer});
    return absl::OkStatus();
  }
  // What was posted before will not complete: abandon it, and refuse from
  // now on, naming the peer; as a lost rank only where the peer is the
  // cause (the transport says unavailable), not for a local failure.
  for (Pending& p : pending) Cancel(p.request);
  if (StopSignal() != 0) AcknowledgeStop();
  absl::Status failed(id.status().code(), StrCat(name(), " transport, rank ", rank_, ": ", what,
                                                 " failed talking to rank ", peer, ": ", id.status().message()));
  return Fail(absl::IsUnavailable(failed) ? WithMissingRanks(std::move(failed), {peer}) : std::move(failed));
}

absl::Status Transport::WaitAll(std::vector<Pending>& pending, Deadline deadline,
                                std::string_view what) {
  const auto started = Deadline::Clock::now();
  int idle_rounds = 0;
  const WaitInProgress waiting;
  while (true) {
    Progress();
    bool all_done = true;
    for (Pending& p : pending) {
      if (p.done) continue;
      absl::StatusOr<bool> done = Test(p.request);
      if (!done.ok()) {
        // A lost peer's error and the launcher's SIGTERM often come
        // together: this error is the report, the process goes on to give it.
        if (StopSignal() != 0) AcknowledgeStop();
        return Fail(WithMissingRanks(absl::UnavailableError(StrCat(name(), " transport, rank ", rank_, ": ", what,
                                                                   " failed talking to rank ", p.peer, ": ",
                                                                   done.status().message())),
                                     {p.peer}));
      }
      p.done = *done;
      all_done &= p.done;
    }
    if (all_done) return absl::OkStatus();
    const int stop = StopSignal();
    if (deadline.Expired() || stop != 0) {
      std::vector<int> missing;
      for (const Pending& p : pending) {
        if (!p.done && std::find(missing.begin(), missing.end(), p.peer) == missing.end()) {
          missing.push_back(p.peer);
        }
      }
      std::sort(missing.begin(), missing.end());
      for (Pending& p : pending) {
        if (!p.done) Cancel(p.request);
      }
      double waited = std::chrono::duration<double>(Deadline::Clock::now() - started).count();
      if (stop != 0) {
        AcknowledgeStop();
        // The launcher is ending this rank (often because a peer or its
        // host was lost): say what the wait was for, while it can.
        return Fail(WithMissingRanks(
            absl::AbortedError(absl::StrFormat(
                "%s transport, rank %d: %s stopped by %s after %.1f s waiting for rank(s) %s",
                std::string(name()), rank_, std::string(what), stop == SIGTERM ? "SIGTERM" : strsignal(stop), waited,
                absl::StrJoin(missing, ", "))),
            missing));
      }
      return Fail(WithMissingRanks(
          absl::DeadlineExceededError(
              absl::StrFormat("%s transport, rank %d: %s timed out after %.1f s waiting for rank(s) %s",
                              std::string(name()), rank_, std::string(what), waited, absl::StrJoin(missing, ", "))),
          missing));
    }
    // Spin briefly, then yield: ranks often share cores (oversubscribed runs).
    if (++idle_rounds > 64) sched_yield();
  }
}

absl::Status Transport::AllToAllV(const std::byte* send, std::span<const int64_t> send_bytes,
                                  std::byte* recv, std::span<const int64_t> recv_bytes,
                                  Deadline deadline) {
  // Blocks back to back: each one's offset is the sum of those before it.
  // (Sizes are checked below, where the offsets are used.)
  const size_t sends = send_bytes.size(), recvs = recv_bytes.size();
  std::vector<int64_t> send_offsets(sends, 0), recv_offsets(recvs, 0);
  for (size_t r = 1; r < sends; ++r) send_offsets[r] = send_offsets[r - 1] + std::max<int64_t>(send_bytes[r - 1], 0);
  for (size_t r = 1; r < recvs; ++r) recv_offsets[r] = recv_offsets[r - 1] + std::max<int64_t>(recv_bytes[r - 1], 0);
  return AllToAllV(send, send_bytes, send_offsets, recv, recv_bytes, recv_offsets, deadline);
}

absl::Status Transport::AllToAllV(const std::byte* send, std::span<const int64_t> send_bytes,
                                  std::span<const int64_t> send_offsets, std::byte* recv,
                                  std::span<const int64_t> recv_bytes, std::span<const int64_t> recv_offsets,
                                  Deadline deadline) {
  uint64_t tag = NextCollectiveTag();
  std::string what = StrCat("all-to-all #", tag & 0xffffffffff);
  MOEX_RETURN_IF_ERROR(Start(what));
  const int world = world_size_;
  if (static_cast<int>(send_bytes.size()) != world || static_cast<int>(recv_bytes.size()) != world ||
      static_cast<int>(send_offsets.size()) != world || static_cast<int>(recv_offsets.size()) != world) {
    return absl::InvalidArgumentError(StrCat(name(), " transport, rank ", rank_, ": ", what,
                                             " needs ", world, " counts and offsets, got ", send_bytes.size(), " and ",
                                             send_offsets.size(), " to send and ", recv_bytes.size(), " and ",
                                             recv_offsets.size(), " to receive"));
  }
  for (int r = 0; r < world; ++r) {
    if (send_bytes[r] < 0 || recv_bytes[r] < 0) {
      return absl::InvalidArgumentError(StrCat(what, ": negative count for rank ", r));
    }
    if (send_offsets[r] < 0 || recv_offsets[r] < 0) {
      return absl::InvalidArgumentError(StrCat(what, ": negative offset for rank ", r));
    }
  }
  std::vector<Pending> pending;
  pending.reserve(2 * world);
  // Receives first, from the next rank round, so that no two ranks start on
  // the same peer; then sends in the same rotation.
  for (int step = 1; step < world; ++step) {
    int peer = (rank_ + step) % world;
    MOEX_RETURN_IF_ERROR(Posted(PostRecv(peer, recv + recv_offsets[peer], recv_bytes[peer], tag), peer, what, pending));
  }
  for (int step = 1; step < world; ++step) {
    int peer = (rank_ + world - step) % world;
    MOEX_RETURN_IF_ERROR(Posted(PostSend(peer, send + send_offsets[peer], send_bytes[peer], tag), peer, what, pending));
  }
  if (send_bytes[rank_] != recv_bytes[rank_]) {
    return Fail(absl::InvalidArgumentError(StrCat(what, ": rank ", rank_, " sends itself ",
                                                  send_bytes[rank_], " bytes but expects ",
                                                  recv_bytes[rank_])));
  }
  if (send_bytes[rank_] > 0) {
    std::memcpy(recv + recv_offsets[rank_], send + send_offsets[rank_], send_bytes[rank_]);
  }
  return WaitAll(pending, deadline, what);
}

absl::Status Transport::ExchangeCounts(std::span<const int64_t> send_counts,
                                       std::span<int64_t> recv_counts, Deadline deadline) {
  std::vector<int64_t> bytes(world_size_, sizeof(int64_t));
  if (static_cast<int>(send_counts.size()) != world_size_ ||
      static_cast<int>(recv_counts.size()) != world_size_) {
    return absl::InvalidArgumentError(StrCat("ExchangeCounts needs ", world_size_, " counts"));
  }
  return AllToAllV(reinterpret_cast<const std::byte*>(send_counts.data()), bytes,
                   reinterpret_cast<std::byte*>(recv_counts.data()), bytes, deadline);
}

absl::Status Transport::Send(int peer, const void* data, int64_t bytes, uint32_t tag,
                             Deadline deadline) {
  std::string what = StrCat("send of ", bytes, " bytes to rank ", peer, " (tag ", tag, ")");
  MOEX_RETURN_IF_ERROR(Start(what));
  if (peer < 0 || peer >= world_size_ || peer == rank_ || tag >= (1u << 20)) {
    return absl::InvalidArgumentError(StrCat(what, ": peer must be another rank in [0, ",
                                             world_size_, ") and tag below 2^20"));
  }
  std::vector<Pending> pending;
  MOEX_RETURN_IF_ERROR(
      Posted(PostSend(peer, static_cast<const std::byte*>(data), bytes, PointToPointTag(tag)), peer, what, pending));
  return WaitAll(pending, deadline, what);
}

absl::Status Transport::Recv(int peer, void* data, int64_t bytes, uint32_t tag, Deadline deadline) {
  std::string what = StrCat("receive of ", bytes, " bytes from rank ", peer, " (tag ", tag, ")");
  MOEX_RETURN_IF_ERROR(Start(what));
  if (peer < 0 || peer >= world_size_ || peer == rank_ || tag >= (1u << 20)) {
    return absl::InvalidArgumentError(StrCat(what, ": peer must be another rank in [0, ",
                                             world_size_, ") and tag below 2^20"));
  }
  std::vector<Pending> pending;
  MOEX_RETURN_IF_ERROR(
      Posted(PostRecv(peer, static_cast<std::byte*>(data), bytes, PointToPointTag(tag)), peer, what, pending));
  return WaitAll(pending, deadline, what);
}

absl::Status Transport::Barrier(Deadline deadline) {
  std::vector<int64_t> none(world_size_, 0);
  return AllToAllV(nullptr, none, nullptr, none, deadline);
}

template <typename T>
absl::Status Transport::Gather(std::span<const T> mine, std::span<T> all, Deadline deadline) {
  if (all.size() != mine.size() * world_size_) {
    return absl::InvalidArgumentError(StrCat("AllGather of ", mine.size(), " values needs room for ",
                                             mine.size() * world_size_, ", got ", all.size()));
  }
  std::vector<T> send(all.size());
  for (int r = 0; r < world_size_; ++r) std::copy(mine.begin(), mine.end(), send.begin() + r * mine.size());
  std::vector<int64_t> bytes(world_size_, static_cast<int64_t>(mine.size() * sizeof(T)));
  return AllToAllV(reinterpret_cast<const std::byte*>(send.data()), bytes,
                   reinterpret_cast<std::byte*>(all.data()), bytes, deadline);
}

template <typename T>
absl::Status Transport::AllReduce(std::span<T> values, Deadline deadline) {
  std::vector<T> gathered(values.size() * world_size_);
  MOEX_RETURN_IF_ERROR(Gather<T>(values, gathered, deadline));
  for (size_t i = 0; i < values.size(); ++i) {
    T sum = 0;
    for (int r = 0; r < world_size_; ++r) sum += gathered[r * values.size() + i];
    values[i] = sum;
  }
  return absl::OkStatus();
}

absl::Status Transport::AllGather(std::span<const double> mine, std::span<double> all, Deadline deadline) {
  return Gather<double>(mine, all, deadline);
}

absl::Status Transport::AllReduceSum(std::span<double> values, Deadline deadline) {
  return AllReduce(values, deadline);
}

absl::Status Transport::AllReduceSum(std::span<int64_t> values, Deadline deadline) {
  return AllReduce(values, deadline);
}

}  // namespace moex::transport
