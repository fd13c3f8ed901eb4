// One benchmark point of `moex bench`, measured on every rank of a transport
// and reported by all of them alike.
//
// For each repetition, after a barrier:
//   ours     = Dispatch + Combine (counts, packing, transfer, the per-token
//              sum), the received rows copied back as the experts' output
//              (not timed);
//   baseline = two plain all-to-all-v calls (MPI_Alltoallv under mpirun)
//              moving exactly the bytes ours moved between ranks.
// Where the ranks span hosts (the dispatcher's probe), ours is the flat path
// (per peer) and the hierarchical path runs beside it in the same
// repetitions, so that the two and the baseline are measured alike.
// With `layer`, the whole MoE layer (route, dispatch, SwiGLU experts,
// combine) runs too, beside route + experts as the layer measured them +
// the plain all-to-all-v of the layer's own bytes.
//
// Every time is the slowest rank's; figures are the median and spread over
// the repetitions after the warm-up. A ratio is reported two ways, named
// apart: `*_of_medians`, the median time over the median time (what
// tables print), and the per-repetition ratios' own median and spread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/job/bench_sweep.h"
#include "moex/transport/transport.h"

namespace moex::bench {

// What a point and a sweep are lives in the job layer (the controller
// validates bench jobs without this one).
using job::BenchPoint;


// Median and spread of one figure over the repetitions, microseconds (or a
// plain number for ratios).
struct Stat {
  double median = 0, min = 0, max = 0, p10 = 0, p90 = 0;
};
Stat Summarize(std::vector<double> values);

struct BenchResult {
  BenchPoint point;
  // How the rows moved (the dispatcher's path: "shared memory", "per
  // peer", "all-to-all-v"); the transport only carries counts and
  // barriers on the shared-memory path, and the baseline is MPI_Alltoallv
  // whatever the transport.
  std::string path;
  int64_t reps = 0, warmup = 0;
  Stat dispatch_us, combine_us, ours_us, baseline_us;
  Stat ratio;                   // ours / baseline per repetition (its median is not the ratio of the medians)
  double ratio_of_medians = 0;  // median ours / median baseline
  double dispatch_bytes_per_rank = 0;  // sent to other ranks, mean over ranks
  double combine_bytes_per_rank = 0;
  double floor_bytes_per_rank = 0;     // distinct remote ranks per token x hidden x 4
  double dispatch_gbps = 0, combine_gbps = 0, baseline_gbps = 0;  // bytes per rank / median time
  double rank_imbalance = 0;           // hottest rank's received tokens / mean
  // Minor page faults a rank took per counted repetition of moex's
  // (dispatch, the copy standing in for the experts, combine; the most of
  // any rank; getrusage around each, so the baseline's are not among them). Buffers and segments are reused
  // after the warm-up, so anything above 0 is the machine remapping pages
  // under a timed copy: the first suspect of a slow state.
  double minor_faults_per_rep = 0;
  // Across hosts (hosts > 1): bytes that crossed between hosts, per rank
  // (mean), dispatch + combine, on the flat path and the hierarchical one;
  // the floor of dispatch's: distinct (token, remote host) pairs x hidden x 4.
  int hosts = 1;
  double internode_bytes_per_rank = 0, internode_floor_bytes_per_rank = 0;
  // The hierarchical path beside the flat one (hosts > 1 only).
  bool has_hierarchical = false;
  Stat hier_dispatch_us, hier_combine_us, hier_us, hier_vs_flat, hier_vs_baseline;  // ratios per rep
  double hier_vs_flat_of_medians = 0, hier_vs_baseline_of_medians = 0;
  double hier_internode_bytes_per_rank = 0;
  // With `layer`:
  Stat layer_us, layer_baseline_us, layer_ratio;  // layer_ratio per repetition
  double layer_ratio_of_medians = 0;
  double route_us = 0, expert_us = 0;  // medians, slowest rank
};

// The plain exchange a figure is set beside. `send_bytes`/`recv_bytes` have
// one entry per rank (the own rank's are 0).
using AllToAllVFn = std::function<absl::Status(const std::byte* send, std::span<const int64_t> send_bytes,
                                               std::byte* recv, std::span<const int64_t> recv_bytes)>;

// MPI_Alltoallv over MPI_COMM_WORLD (MPI must be initialised).
AllToAllVFn MpiAlltoallv();


struct RunOptions {
  int warmup = 2;
  int reps = 10;
  uint64_t seed = 1;
  double rep_timeout_seconds = 120;  // each exchange's deadline
};

// Collective: every rank calls it with the same point and options.
absl::StatusOr<BenchResult> RunPoint(transport::Transport& transport, const AllToAllVFn& baseline,
                                     BenchPoint point, const RunOptions& options);

// "ranks 4, 1024 tok/rank, H 1024, top-4 of 32, F 256, skew 0".
std::string DescribePoint(const BenchPoint& point);
// One line of a result: dispatch+combine against MPI_Alltoallv, the layer.
std::string SummaryLine(const BenchResult& result);

// Every point on this rank's transport, one after the other, each against
// MPI_Alltoallv; `on_point` sees each result (on every rank) and may stop
// the run by returning an error. Collective.
absl::Status RunPoints(transport::Transport& transport, const std::vector<BenchPoint>& points,
                       const RunOptions& options,
                       const std::function<absl::Status(const BenchResult&, size_t)>& on_point);

}  // namespace moex::bench
