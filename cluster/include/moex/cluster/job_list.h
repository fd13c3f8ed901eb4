// ListJobs' pages, bounded by count and by bytes: a reply stays under a
// client's default 4 MiB limit however large the jobs grew (a bench job's
// points), and no job is too large to list: one that alone passes the
// bound is listed cut down (its bench points' `json` records dropped, then
// its last points), saying so in the Job (bench_json_omitted,
// bench_points_omitted). GetJob still answers it whole.
#pragma once

#include <cstddef>

#include "absl/status/statusor.h"
#include "moex/cluster/job_manager.h"
#include "moex/v1/job.pb.h"

namespace moex::cluster {

// What a ListJobs reply may weigh, serialised (gRPC's default receive limit
// is 4 MiB; the rest is headroom).
inline constexpr size_t kListReplyMaxBytes = size_t{3} << 20;

// The page after request.page_token: at most page_size jobs (0: 100, at most
// 1000), oldest first, stopping before the reply would pass `max_bytes` but
// holding at least one job; next_page_token is set when more may follow.
// INVALID_ARGUMENT for a negative page_size or a token this controller did
// not give.
absl::StatusOr<moex::v1::ListJobsResponse> ListJobsPage(JobManager& jobs, const moex::v1::ListJobsRequest& request,
                                                        size_t max_bytes = kListReplyMaxBytes);

// Cuts `job` down to at most `max_bytes` serialised, if it is larger, by its
// bench points only (their `json` first, then the last points), and says so
// in its bench_json_omitted and bench_points_omitted.
void TrimForList(moex::v1::Job* job, size_t max_bytes);

}  // namespace moex::cluster
