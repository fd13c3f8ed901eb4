#include "moex/cluster/job_list.h"

#include <algorithm>
#include <limits>
#include <string>

#include "moex/core/str_cat.h"

namespace moex::cluster {
namespace {

// ListJobs' page token: "<submit time ms>:<job id>" of the last job given.
bool ParsePageToken(const std::string& token, int64_t* after_ms, std::string* after_id) {
  const size_t colon = token.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= token.size() || colon > 18) return false;
  int64_t ms = 0;
  for (size_t i = 0; i < colon; ++i) {
    if (token[i] < '0' || token[i] > '9') return false;
    ms = ms * 10 + (token[i] - '0');
  }
  *after_ms = ms;
  *after_id = token.substr(colon + 1);
  return true;
}

// A job's share of the reply: its bytes, the field's tag and length.
size_t EntryBytes(const moex::v1::Job& job) { return job.ByteSizeLong() + 1 + 5; }

}  // namespace

void TrimForList(moex::v1::Job* job, size_t max_bytes) {
  if (job->ByteSizeLong() <= max_bytes || job->bench_size() == 0) return;
  for (moex::v1::BenchPointResult& point : *job->mutable_bench()) point.clear_json();
  job->set_bench_json_omitted(true);
  int omitted = 0;
  while (job->bench_size() > 0 && job->ByteSizeLong() > max_bytes) {
    job->mutable_bench()->RemoveLast();
    job->set_bench_points_omitted(++omitted);
  }
}

absl::StatusOr<moex::v1::ListJobsResponse> ListJobsPage(JobManager& jobs, const moex::v1::ListJobsRequest& request,
                                                        size_t max_bytes) {
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError(StrCat("page_size is ", request.page_size(), "; it must be 0 (100) or more"));
  }
  const int limit = request.page_size() == 0 ? 100 : std::min(request.page_size(), 1000);
  int64_t after_ms = std::numeric_limits<int64_t>::min();
  std::string after_id;
  if (!request.page_token().empty() && !ParsePageToken(request.page_token(), &after_ms, &after_id)) {
    return absl::InvalidArgumentError("page_token is not one this controller gave (pass next_page_token)");
  }
  absl::StatusOr<std::vector<moex::v1::Job>> page = jobs.ListPage(after_ms, after_id, limit);
  if (!page.ok()) return page.status();
  // Room for the token and the reply's own framing.
  const size_t budget = max_bytes > 256 ? max_bytes - 256 : 0;
  moex::v1::ListJobsResponse response;
  size_t used = 0;
  bool full = false;
  for (moex::v1::Job& job : *page) {
    TrimForList(&job, budget);
    const size_t entry = EntryBytes(job);
    if (response.jobs_size() > 0 && used + entry > budget) {
      full = true;
      break;
    }
    used += entry;
    *response.add_jobs() = std::move(job);
  }
  if (response.jobs_size() > 0 && (full || response.jobs_size() == limit)) {
    const moex::v1::Job& last = response.jobs(response.jobs_size() - 1);
    response.set_next_page_token(StrCat(last.submit_time_unix_ms(), ":", last.id()));
  }
  return response;
}

}  // namespace moex::cluster
