#include "moex/run/run_weights.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <span>

#include "absl/strings/str_format.h"
#include "fault_hooks.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::run {

void WarnOnRank(int rank, std::string_view what) {
  std::string line = StrCat("moex run: rank ", rank, ": warning: ", what, "\n");
  (void)!write(STDERR_FILENO, line.data(), line.size());
}

absl::StatusOr<ep::MoeWeights> RunWeights::Load(const std::vector<int64_t>& mine, transport::Transport& t,
                                               double timeout_seconds) {
  if (!cache_dir_.empty()) {
    absl::StatusOr<ep::WeightCache> opened = ep::WeightCache::Open(cache_dir_);
    if (opened.ok()) {
      cache_ = std::move(*opened);
    } else {
      WarnOnRank(rank_, StrCat("weight cache off: ", opened.status().message()));
    }
  }
  ep::WeightLoadReport report;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<ep::MoeWeights> loaded =
      ep::LoadMoeWeights(spec_, checkpoint_, seed_, mine, cache_ ? &*cache_ : nullptr, &report, options_);
  MaybeSlowLoad(rank_);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Every rank learns whether every rank loaded, and in which dtype: a bad
  // tensor found by one rank ends them all now (not at the next exchange's
  // deadline), and ranks whose experts differ in dtype (different copies of
  // a checkpoint) never exchange experts.
  {
    const double state[] = {loaded.ok() ? static_cast<double>(loaded->expert_format) : -1.0};
    std::vector<double> states(t.world_size());
    // The deadline starts now: this rank's load, however long, is not
    // the wait (measured: a full-size Jamba layer took over 600 s to make
    // on a loaded 2-core machine, and a deadline taken before it left the
    // wait 0.2 s).
    absl::Status gathered = t.AllGather(std::span<const double>(state), std::span<double>(states),
                                        Deadline::InSeconds(timeout_seconds));
    if (!gathered.ok()) {
      absl::Status out(gathered.code(), StrCat("rank ", rank_, " loaded its weights in ", absl::StrFormat("%.1f", seconds),
                                               " s and waited for the other ranks' loads: ", gathered.message()));
      gathered.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
      return out;
    }
    if (!loaded.ok()) return loaded.status();
    std::vector<int> failed, other_dtype;
    for (int r = 0; r < t.world_size(); ++r) {
      if (states[r] < 0) failed.push_back(r);
      else if (states[r] != state[0]) other_dtype.push_back(r);
    }
    auto list = [](const std::vector<int>& ranks) {
      std::string out;
      for (size_t i = 0; i < ranks.size() && i < 8; ++i) out += StrCat(i ? ", " : "", ranks[i]);
      return ranks.size() > 8 ? StrCat(out, " and ", ranks.size() - 8, " more") : out;
    };
    if (!failed.empty()) {
      return absl::AbortedError(StrCat("stopping: rank(s) ", list(failed), " could not load their weights (their lines say why)"));
    }
    if (!other_dtype.empty()) {
      return absl::FailedPreconditionError(StrCat("this rank's experts are ", WeightFormatName(loaded->expert_format),
                                                  ", those of rank(s) ", list(other_dtype),
                                                  " another dtype: every rank must read the same checkpoint"));
    }
  }
  ep::MoeWeights weights = std::move(*loaded);
  cache_failed_ = !report.put_error.empty();
  for (size_t i = 0; i < report.rejected.size() && i < 3; ++i) {
    WarnOnRank(rank_, StrCat("weight cache entry not used: ", report.rejected[i]));
  }
  if (report.rejected.size() > 3) {
    WarnOnRank(rank_, StrCat("... and ", report.rejected.size() - 3, " more weight cache entries not used"));
  }
  if (!report.put_error.empty()) WarnOnRank(rank_, StrCat("weights not cached from here on: ", report.put_error));

  std::vector<int64_t> sums = {report.experts_from_cache, report.experts_loaded, report.bytes_from_cache,
                               report.bytes_loaded, static_cast<int64_t>(report.rejected.size())};
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(sums), Deadline::InSeconds(timeout_seconds)));
  std::vector<double> gathered(2 * t.world_size()), times(t.world_size());
  const double mine_figures[] = {seconds, static_cast<double>(weights.expert_bytes())};
  MOEX_RETURN_IF_ERROR(t.AllGather(std::span<const double>(mine_figures), std::span<double>(gathered),
                                   Deadline::InSeconds(timeout_seconds)));
  expert_bytes_per_rank_.assign(t.world_size(), 0);
  for (int r = 0; r < t.world_size(); ++r) {
    times[r] = gathered[2 * r];
    expert_bytes_per_rank_[r] = static_cast<int64_t>(gathered[2 * r + 1]);
  }
  experts_from_cache_ = sums[0];
  experts_loaded_ = sums[1];
  const std::string from = checkpoint_ != nullptr ? StrCat("the checkpoint ", checkpoint_->path()) : StrCat("seed ", seed_);
  const double slowest = *std::max_element(times.begin(), times.end());
  if (cache_dir_.empty()) {
    line_ = absl::StrFormat("moex run: weights: %d experts (over all ranks) loaded from %s (%s); slowest rank %.3f s\n",
                            sums[1], from, FormatBytes(static_cast<double>(sums[3])), slowest);
  } else {
    line_ = absl::StrFormat(
        "moex run: weights: %d of %d experts (over all ranks) read from the host cache %s, %d loaded from %s "
        "(%s read, %s loaded, %d entries unusable); slowest rank %.3f s\n",
        sums[0], sums[0] + sums[1], cache_dir_, sums[1], from, FormatBytes(static_cast<double>(sums[2])),
        FormatBytes(static_cast<double>(sums[3])), sums[4], slowest);
  }
  const auto [least, most] = std::minmax_element(expert_bytes_per_rank_.begin(), expert_bytes_per_rank_.end());
  const bool mapped = options_.map_checkpoint && ep::ExpertsUsedInPlace(spec_, checkpoint_);
  line_ += StrCat("moex run: experts held in ", WeightFormatName(weights.expert_format),
                  mapped ? " (mapped read-only from the checkpoint: one copy a host, in the page cache)"
                  : checkpoint_ != nullptr && options_.map_checkpoint
                      ? " (copied into each rank: the family's stacked layout is cut at load)"
                  : checkpoint_ != nullptr ? " (copied into each rank)" : "",
                  ": ", FormatBytes(static_cast<double>(*least)),
                  *least == *most ? StrCat(" on each rank") : StrCat(" to ", FormatBytes(static_cast<double>(*most)), " a rank"),
                  "\n");
  return weights;
}

void RunWeights::CacheReceived(int64_t expert, const ep::ExpertWeights& weights) {
  if (!cache_ || cache_failed_) return;
  absl::Status cached = ep::CacheExpert(spec_, checkpoint_, seed_, expert, weights, *cache_);
  if (!cached.ok()) {
    cache_failed_ = true;
    WarnOnRank(rank_, StrCat("migrated experts not cached from here on: ", cached.message()));
  }
}

void RunWeights::DropHostCache() const {
  if (cache_dir_.empty()) return;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* local = std::getenv(name);
    if (local == nullptr) continue;
    if (std::string(local) == "0") {
      std::error_code error;
      std::filesystem::remove_all(cache_dir_, error);
      if (error) WarnOnRank(rank_, StrCat("cannot remove the weight cache '", cache_dir_, "': ", error.message()));
    }
    return;
  }
}

}  // namespace moex::run
