#include <functional>

#include "absl/strings/str_format.h"
#include "moex/bench/bench.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::bench {

std::string DescribePoint(const BenchPoint& p) {
  return absl::StrFormat("ranks %d, %d tok/rank, H %d, top-%d of %d, F %d, skew %g", p.ranks, p.tokens_per_rank,
                         p.hidden, p.top_k, p.experts, p.expert_width, p.skew);
}

std::string SummaryLine(const BenchResult& r) {
  std::string line = r.point.ranks > 1 ? absl::StrFormat("dispatch+combine %.0f us, MPI_Alltoallv %.0f us (medians), "
                                                         "ratio of medians %.2f",
                                                         r.ours_us.median, r.baseline_us.median, r.ratio_of_medians)
                                       : std::string("one rank: nothing crosses between ranks");
  if (r.has_hierarchical) {
    line += absl::StrFormat("; across %d hosts: hierarchical %.0f us (%.2fx flat, %.2fx MPI_Alltoallv), "
                            "internode %s flat, %s hierarchical, floor %s per rank",
                            r.hosts, r.hier_us.median, r.hier_vs_flat_of_medians, r.hier_vs_baseline_of_medians,
                            FormatBytes(r.internode_bytes_per_rank), FormatBytes(r.hier_internode_bytes_per_rank),
                            FormatBytes(r.internode_floor_bytes_per_rank));
  }
  if (r.minor_faults_per_rep >= 1) {
    line += absl::StrFormat("; %.1f page faults a repetition inside dispatch + combine", r.minor_faults_per_rep);
  }
  if (r.point.layer) {
    line += absl::StrFormat("; layer %.0f us (ratio of medians %.2f)", r.layer_us.median, r.layer_ratio_of_medians);
  }
  return line;
}

// Every point on this rank's transport, one after the other; `on_point`
// sees each result (on every rank).
absl::Status RunPoints(transport::Transport& t, const std::vector<BenchPoint>& points,
                       const RunOptions& options,
                       const std::function<absl::Status(const BenchResult&, size_t)>& on_point) {
  for (size_t i = 0; i < points.size(); ++i) {
    absl::StatusOr<BenchResult> result = RunPoint(t, MpiAlltoallv(), points[i], options);
    if (!result.ok()) {
      return absl::Status(result.status().code(), StrCat("point ", i + 1, " (", DescribePoint(points[i]), "): ",
                                                         result.status().message()));
    }
    MOEX_RETURN_IF_ERROR(on_point(*result, i));
  }
  return absl::OkStatus();
}

}  // namespace moex::bench
