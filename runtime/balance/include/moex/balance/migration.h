// Live migration of expert weights from one placement to the next.
//
// Every rank builds the same plan from the two placements: which experts
// each rank lacks, and a rank that holds each of them now (the replicas
// share the sending). The transfers run in chunks of at most a byte budget,
// one chunk per step after that step's forward pass, each an all-to-all-v
// over the data plane in which only the moved experts' weights travel. The
// old placement keeps serving meanwhile; received weights wait, unused,
// until every rank has all it needs and the ranks switch together at a step
// boundary (MoeLayer::SwitchPlacement). A rank that fails or goes silent
// mid-migration fails the chunk's exchange on every rank, naming it: the job
// ends with the reason, and no rank ever serves a half-moved placement.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/ep/layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::balance {

struct ExpertTransfer {
  int64_t expert = 0;
  int from = 0;
  int to = 0;
};

struct MigrationStats {
  int64_t bytes_sent = 0;      // by this rank
  int64_t experts_received = 0;
  double seconds = 0;
};

class Migration {
 public:
  // `expert_bytes`: the size of one expert's weights as they travel
  // (ep::ExpertBytes); `chunk_bytes`: budget of one chunk, over all ranks (a
  // chunk holds at least one transfer).
  static absl::StatusOr<Migration> Plan(const placement::Placement& from, placement::Placement to, int64_t version,
                                        int64_t expert_bytes, int64_t chunk_bytes);

  int64_t version() const { return version_; }
  const placement::Placement& next() const { return next_; }
  const std::vector<ExpertTransfer>& transfers() const { return transfers_; }
  int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }
  int64_t chunks_done() const { return next_chunk_; }
  bool done() const { return next_chunk_ == num_chunks(); }
  int64_t total_bytes() const { return static_cast<int64_t>(transfers_.size()) * expert_bytes_; }

  // Runs the next chunk on this rank: sends what it serves from `current`
  // (the layer serving now, its held weights) and keeps what it receives. Every rank calls
  // it the same number of times.
  absl::Status RunChunk(transport::Transport& transport, const ep::Layer& current, Deadline deadline,
                        MigrationStats* stats);
  // The experts this rank received, for MoeLayer::SwitchPlacement.
  std::map<int64_t, ep::ExpertWeights> TakeReceived() { return std::move(received_); }

 private:
  Migration(placement::Placement next, int64_t version) : next_(std::move(next)), version_(version) {}

  placement::Placement next_;
  int64_t version_;
  int64_t expert_bytes_ = 0;
  std::vector<ExpertTransfer> transfers_;
  std::vector<std::vector<size_t>> chunks_;  // transfer indices
  int64_t next_chunk_ = 0;
  std::map<int64_t, ep::ExpertWeights> received_;
  std::vector<std::byte> send_, recv_;
};

}  // namespace moex::balance
