#include "moex/cli/job_printing.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <iostream>
#include <map>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "moex/bench/report.h"
#include "moex/core/str_cat.h"
#include "nlohmann/json.hpp"

namespace moex::cli {

std::string StateName(moex::v1::JobState state) {
  std::string name = moex::v1::JobState_Name(state);
  return name.rfind("JOB_STATE_", 0) == 0 ? name.substr(10) : name;
}

std::string EndReasonName(moex::v1::EndReason reason) {
  std::string name = moex::v1::EndReason_Name(reason);
  if (name.rfind("END_REASON_", 0) == 0) name = name.substr(11);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name.empty() ? std::to_string(static_cast<int>(reason)) : name;
}

std::string Time(int64_t ms) {
  if (ms <= 0) return "-";
  std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%d %H:%M:%S", std::localtime(&seconds));
  return buffer;
}

std::string ToJson(const google::protobuf::Message& message) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // rank 0 is a rank too
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void PrintJob(const moex::v1::Job& job) {
  const auto& spec = job.spec();
  std::cout << absl::StrFormat("job %s  %s\n", job.id(), StateName(job.state()));
  if (spec.has_bench()) {
    std::cout << absl::StrFormat("  name %s, %d ranks, bench of %d points over %s (%d reps after %d warm-up)\n",
                                 spec.name(), spec.world_size(), spec.steps(), spec.transport(), spec.bench().reps(),
                                 spec.bench().warmup());
  } else {
    std::cout << absl::StrFormat("  name %s, %d ranks, model %s, %d steps of %d tokens per rank over %s\n",
                                 spec.name(), spec.world_size(), spec.model(), spec.steps(), spec.tokens_per_rank(),
                                 spec.transport());
  }
  std::cout << "  message: " << job.message() << "\n";
  if (job.end_reason() != moex::v1::END_REASON_UNSPECIFIED) {
    std::cout << "  end reason: " << EndReasonName(job.end_reason()) << "\n";
  }
  std::cout << absl::StrFormat("  submitted %s, started %s, ended %s\n", Time(job.submit_time_unix_ms()),
                               Time(job.start_time_unix_ms()), Time(job.end_time_unix_ms()));
  std::cout << absl::StrFormat("  ranks registered %d/%d", job.ranks_registered(), job.world_size() > 0 ? job.world_size()
                                                                                                   : spec.world_size());
  // By host: "h0: 0 (pid 12), 1 (pid 13); h1: 2 (pid 40)".
  std::map<std::string, std::vector<std::string>> by_host;
  for (const auto& rank : job.ranks()) by_host[rank.host()].push_back(absl::StrFormat("%d (pid %d)", rank.rank(), rank.pid()));
  for (const auto& [host, ranks] : by_host) std::cout << "; " << host << ": " << absl::StrJoin(ranks, ", ");
  std::cout << "\n";
  if (job.metrics().steps_done() > 0) {
    const auto& m = job.metrics();
    std::cout << absl::StrFormat("  metrics: %d steps, %.0f tokens/s, dispatch %.2f ms, combine %.2f ms, imbalance %.2f",
                                 m.steps_done(), m.tokens_per_second(), 1e3 * m.dispatch_seconds(),
                                 1e3 * m.combine_seconds(), m.imbalance());
    if (spec.check()) std::cout << absl::StrFormat(", check relative error %.2g", m.check_relative_error());
    std::cout << "\n";
  }
  if (job.tokens_per_expert_size() > 0) {
    int64_t total = 0, most = 0;
    for (int64_t n : job.tokens_per_expert()) {
      total += n;
      most = std::max(most, n);
    }
    double mean = static_cast<double>(total) / job.tokens_per_expert_size();
    std::cout << absl::StrFormat("  expert load (last step): %d experts, %d routed tokens, hottest %d (%.2fx the mean)\n",
                                 job.tokens_per_expert_size(), total, most, mean > 0 ? most / mean : 0.0);
  }
  if (job.load().window_steps() > 0) {
    const auto& load = job.load();
    // The hottest experts by exponential average.
    std::vector<std::pair<double, int>> hot;
    for (int e = 0; e < load.ema_tokens_per_expert_size(); ++e) hot.push_back({load.ema_tokens_per_expert(e), e});
    std::sort(hot.rbegin(), hot.rend());
    double total = 0;
    for (const auto& [n, e] : hot) total += n;
    std::string top;
    for (size_t i = 0; i < std::min<size_t>(3, hot.size()); ++i) {
      StrAppend(&top, i ? ", " : "", hot[i].second, absl::StrFormat(" (%.1f%%)", total > 0 ? 100 * hot[i].first / total : 0.0));
    }
    // Balancedness (mean/max, SGLang's and vLLM's figure) is its inverse.
    const double imbalance = load.window_imbalance();
    std::cout << absl::StrFormat(
        "  load: window of %d steps, rank imbalance (max/mean) %.3f, balancedness (mean/max) %.3f; hottest experts "
        "(average): %s\n",
        load.window_steps(), imbalance, imbalance > 0 ? 1 / imbalance : 1.0, top);
  }
  if (job.placement().version() > 0) {
    std::cout << absl::StrFormat("  placement: version %d published, version %d serving", job.placement().version(),
                                 std::max<int64_t>(1, job.metrics().placement_version()));
    if (spec.rebalance().threshold() > 0) {
      std::cout << absl::StrFormat("; rebalances above %.2f (%s, every %d steps at most)", spec.rebalance().threshold(),
                                   spec.rebalance().policy(), spec.rebalance().interval());
    }
    std::cout << "\n";
  }
  for (const auto& r : job.rebalances()) {
    std::cout << absl::StrFormat("  rebalance v%d at step %d (%s, %s): imbalance %.3f -> %.3f, %d experts moved, %s\n",
                                 r.version(), r.decided_at_step(), r.policy(), r.reason(), r.imbalance_before(),
                                 r.imbalance_after(), r.experts_moved(),
                                 r.live_at_step() > 0 ? StrCat("serving from step ", r.live_at_step()) : "migrating");
  }
  if (job.attempts_size() > 1 || job.spec().max_restarts() > 0) {
    std::cout << absl::StrFormat("  attempts (%d restarts allowed%s):\n", job.spec().max_restarts(),
                                 job.spec().allow_shrink() ? ", may shrink" : "");
    for (const auto& a : job.attempts()) {
      const int64_t held = a.experts_from_cache() + a.experts_loaded();
      std::cout << absl::StrFormat("    %d: %d ranks, steps %d-%d, %s -> %s%s%s\n", a.number(), a.world_size(),
                                   a.first_step(), a.end_time_unix_ms() > 0 ? a.steps_done() : job.metrics().steps_done(),
                                   Time(a.start_time_unix_ms()), a.end_time_unix_ms() > 0 ? Time(a.end_time_unix_ms()) : "now",
                                   held > 0 ? absl::StrFormat(", experts: %d of %d read back from the host cache",
                                                              a.experts_from_cache(), held)
                                            : "",
                                   a.ended().empty() ? "" : StrCat(": ", a.ended()));
      if (a.reason() != moex::v1::END_REASON_UNSPECIFIED) {
        std::cout << absl::StrFormat("       reason %s%s%s\n", EndReasonName(a.reason()),
                                     a.lost_ranks_size() > 0 ? StrCat("; ranks lost: ", absl::StrJoin(a.lost_ranks(), ", "))
                                                             : "",
                                     a.launcher_signal() > 0 ? StrCat("; launcher killed by signal ", a.launcher_signal())
                                     : a.launcher_exit_code() > 0 ? StrCat("; launcher exit code ", a.launcher_exit_code())
                                                                  : "");
      }
      if (!a.launcher().empty() || a.lost_hosts_size() > 0) {
        std::cout << absl::StrFormat("       launched through %s%s%s\n", a.launcher().empty() ? "?" : a.launcher(),
                                     a.launcher_job_id().empty() ? "" : StrCat(" (job ", a.launcher_job_id(), ")"),
                                     a.lost_hosts_size() > 0 ? StrCat("; hosts lost: ", absl::StrJoin(a.lost_hosts(), ", ")) : "");
      }
    }
  }
  if (job.bench_size() > 0) {
    // Ratios of the medians, from each point's medians and whole record
    // (records from before 2026-12-01 carry the median of the per-repetition
    // ratios in the proto's `ratio` fields).
    std::cout << absl::StrFormat("  bench (medians, slowest rank; baseline: MPI_Alltoallv of the same bytes; ratios of "
                                 "the medians):\n"
                                 "  %8s %6s %5s %4s %5s %6s %10s %12s %6s %8s %10s %7s  %s\n",
                                 "tok/rank", "hidden", "top-k", "E", "F", "skew", "moex us", "alltoallv us", "ratio",
                                 "GB/s", "layer us", "ratio", "path");
    for (const auto& b : job.bench()) {
      absl::StatusOr<bench::BenchResult> record = bench::FromJson(nlohmann::json::parse(b.json(), nullptr, false));
      const double ratio = b.baseline_us() > 0 ? b.ours_us() / b.baseline_us() : 0;
      const double layer_ratio = record.ok() ? record->layer_ratio_of_medians : b.layer_ratio();
      std::cout << absl::StrFormat("  %8d %6d %5d %4d %5d %6g %10.0f %12.0f %6.2f %8.2f %10s %7s  %s\n",
                                   b.tokens_per_rank(), b.hidden(), b.top_k(), b.experts(), b.expert_width(), b.skew(),
                                   b.ours_us(), b.baseline_us(), ratio, b.dispatch_gbps(),
                                   b.layer_us() > 0 ? absl::StrFormat("%.0f", b.layer_us()) : "-",
                                   b.layer_us() > 0 ? absl::StrFormat("%.2f", layer_ratio) : "-", b.path());
    }
  }
  std::cout << "  log: " << job.log_path() << "\n";
}


}  // namespace moex::cli
