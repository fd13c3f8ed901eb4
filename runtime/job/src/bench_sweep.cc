#include "moex/job/bench_sweep.h"

#include <algorithm>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::job {
namespace {

std::vector<int64_t> Checked(const std::vector<int64_t>& list, const char* name, absl::Status* status) {
  if (list.empty() && status->ok()) *status = absl::InvalidArgumentError(StrCat("bench sweep: --", name, " is empty"));
  if (list.size() > 32 && status->ok()) {
    *status = absl::InvalidArgumentError(StrCat("bench sweep: --", name, " has ", list.size(), " values (at most 32)"));
  }
  return list;
}

}  // namespace

absl::Status ValidatePoint(const BenchPoint& p) {
  auto bad = [](std::string_view field, auto value, std::string_view want) {
    return absl::InvalidArgumentError(StrCat("bench point: ", field, " ", value, " is outside ", want));
  };
  if (p.tokens_per_rank < 1 || p.tokens_per_rank > (1 << 20)) return bad("tokens_per_rank", p.tokens_per_rank, "[1, 1048576]");
  if (p.hidden < 1 || p.hidden > 65536) return bad("hidden", p.hidden, "[1, 65536]");
  if (p.experts < 1 || p.experts > 4096) return bad("experts", p.experts, "[1, 4096]");
  if (p.top_k < 1 || p.top_k > std::min<int64_t>(p.experts, 64)) {
    return bad("top_k", p.top_k, StrCat("[1, min(experts, 64) = ", std::min<int64_t>(p.experts, 64), "]"));
  }
  if (p.expert_width < 1 || p.expert_width > 65536) return bad("expert_width", p.expert_width, "[1, 65536]");
  if (!(p.skew >= 0 && p.skew <= 10)) return bad("skew", p.skew, "[0, 10]");
  if (p.tokens_per_rank * p.hidden > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(StrCat("bench point: tokens_per_rank x hidden = ", p.tokens_per_rank * p.hidden,
                                             " floats per rank is over the 2^30 (4 GiB) limit"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BenchPoint>> ExpandSweep(const SweepSpec& spec, int64_t ranks,
                                                    const std::string& transport) {
  if (spec.scaling != "weak" && spec.scaling != "strong" && spec.scaling != "grid") {
    return absl::InvalidArgumentError(StrCat("bench sweep: --scaling '", spec.scaling, "' is not one of weak, strong, grid"));
  }
  if (ranks < 1 || ranks > 4096) return absl::InvalidArgumentError(StrCat("bench sweep: ranks ", ranks, " is outside [1, 4096]"));
  absl::Status status;
  std::vector<int64_t> tokens = Checked(spec.scaling == "strong" ? spec.total_tokens : spec.tokens_per_rank,
                                        spec.scaling == "strong" ? "total-tokens" : "tokens", &status);
  std::vector<int64_t> hidden = Checked(spec.hidden, "hidden", &status), top_k = Checked(spec.top_k, "top-k", &status);
  std::vector<int64_t> experts = Checked(spec.experts, "experts", &status);
  std::vector<int64_t> width = Checked(spec.expert_width, "expert-width", &status);
  if (spec.skew.empty() || spec.skew.size() > 32) {
    return absl::InvalidArgumentError("bench sweep: --skew needs 1 to 32 values");
  }
  MOEX_RETURN_IF_ERROR(status);
  std::vector<BenchPoint> points;
  for (int64_t t : tokens) {
    for (int64_t h : hidden) {
      for (int64_t k : top_k) {
        for (int64_t e : experts) {
          for (int64_t f : width) {
            for (double s : spec.skew) {
              BenchPoint p;
              p.ranks = ranks;
              p.transport = transport;
              p.scaling = spec.scaling;
              if (spec.scaling == "strong") {
                if (t % ranks != 0) {
                  return absl::InvalidArgumentError(StrCat("bench sweep: strong scaling splits --total-tokens ", t,
                                                           " over ", ranks, " ranks unevenly"));
                }
                p.tokens_per_rank = t / ranks;
              } else {
                p.tokens_per_rank = t;
              }
              p.hidden = h, p.top_k = k, p.experts = e, p.expert_width = f, p.skew = s, p.layer = spec.layer;
              absl::Status valid = ValidatePoint(p);
              if (!valid.ok()) return absl::InvalidArgumentError(StrCat(valid.message(), " (at ", ranks, " ranks)"));
              if (e < ranks) {
                return absl::InvalidArgumentError(StrCat("bench sweep: ", e, " experts cannot be spread over ", ranks, " ranks"));
              }
              points.push_back(p);
            }
          }
        }
      }
    }
  }
  return points;
}

absl::StatusOr<int64_t> CountSweep(const SweepSpec& spec) {
  if (spec.ranks.empty() || spec.transports.empty()) return absl::InvalidArgumentError("bench sweep: no ranks or no transports");
  int64_t n = 0;
  for (int64_t r : spec.ranks) {
    for (const std::string& t : spec.transports) {
      if (t != "mpi" && t != "ucx") return absl::InvalidArgumentError(StrCat("bench sweep: transport '", t, "' is not one of mpi, ucx"));
      MOEX_ASSIGN_OR_RETURN(std::vector<BenchPoint> points, ExpandSweep(spec, r, t));
      n += static_cast<int64_t>(points.size());
    }
  }
  if (n > 4096) return absl::InvalidArgumentError(StrCat("bench sweep: ", n, " points is over the limit of 4096"));
  return n;
}

}  // namespace moex::job
