// Where a `moex run` rank's weights come from: the checkpoint or the seed,
// and with --weight-cache the host's weight cache, which it reads back and
// fills (also with experts that live migration brings). Private to
// the run loop (runner.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/ep/moe_weights.h"
#include "moex/ep/weight_cache.h"
#include "moex/model/safetensors.h"
#include "moex/transport/transport.h"

namespace moex::run {

// One line on this rank's stderr, written at once (ranks do not interleave).
void WarnOnRank(int rank, std::string_view what);

class RunWeights {
 public:
  // `checkpoint` null: random weights from `seed`; `cache_dir` empty: no cache.
  // The checkpoint must outlive this object.
  RunWeights(const ep::MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed, std::string cache_dir,
             int rank, ep::WeightLoadOptions options = {})
      : spec_(spec), checkpoint_(checkpoint), seed_(seed), cache_dir_(std::move(cache_dir)), rank_(rank),
        options_(options) {}

  // This rank's experts `mine`: those the host's cache holds are read from
  // it, the rest loaded and put there. A cache that cannot be used is a
  // warning: the weights load as without one. Collective: the load is summed
  // over the ranks for line() and the counts below. `timeout_seconds`
  // bounds the wait for the other ranks once this rank's own load is done
  // (a load is not an exchange: however long it takes, the wait after it
  // gets the whole timeout), and the error then says so.
  absl::StatusOr<ep::MoeWeights> Load(const std::vector<int64_t>& mine, transport::Transport& t,
                                      double timeout_seconds);

  // Rank 0's "moex run: weights: …" line (where the weights came from, the
  // slowest rank's time), ending in a newline.
  const std::string& line() const { return line_; }
  // Over all ranks, distinct experts per rank.
  int64_t experts_from_cache() const { return experts_from_cache_; }
  int64_t experts_loaded() const { return experts_loaded_; }
  // Each rank's routed experts' bytes as held (stored dtype), by rank.
  const std::vector<int64_t>& expert_bytes_per_rank() const { return expert_bytes_per_rank_; }
  const ep::WeightLoadOptions& options() const { return options_; }

  // An expert that migrated here goes into this host's cache (unless it is
  // there already), so that a relaunch on this host finds it. A failure is a
  // warning, said once.
  void CacheReceived(int64_t expert, const ep::ExpertWeights& weights);
  // Removes the cache when this is the host's first rank (Open MPI, MPICH
  // or Slurm local rank 0); for a controller job whose steps all ran here.
  void DropHostCache() const;

 private:
  const ep::MoeLayerSpec& spec_;
  const model::Checkpoint* checkpoint_;
  uint64_t seed_;
  std::string cache_dir_;
  int rank_;
  ep::WeightLoadOptions options_;
  std::vector<int64_t> expert_bytes_per_rank_;
  std::optional<ep::WeightCache> cache_;
  bool cache_failed_ = false;
  std::string line_;
  int64_t experts_from_cache_ = 0, experts_loaded_ = 0;
};

}  // namespace moex::run
