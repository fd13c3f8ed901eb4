#include "memory_check.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <span>
#include <vector>

#include "moex/core/format.h"
#include "moex/core/host_memory.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/transport/gather_strings.h"

namespace moex::run {
namespace {

int64_t ReadNumber(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  char* end = nullptr;
  const long long value = std::strtoll(word.c_str(), &end, 10);
  return end != nullptr && *end == '\0' && value >= 0 ? value : -1;
}

// cgroup v2: the least memory.max less memory.current of this process's
// cgroup and its ancestors (Slurm sets the limit on the job's cgroup, its
// tasks' leaves say "max").
int64_t CgroupAvailable() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    std::string relative = line.substr(3);
    int64_t least = -1;
    while (true) {
      const std::string dir = "/sys/fs/cgroup" + (relative == "/" ? "" : relative);
      const int64_t max = ReadNumber(dir + "/memory.max"), current = ReadNumber(dir + "/memory.current");
      if (max >= 0) {
        const int64_t available = std::max<int64_t>(0, max - std::max<int64_t>(0, current));
        if (least < 0 || available < least) least = available;
      }
      if (relative.empty() || relative == "/") break;
      const size_t slash = relative.find_last_of('/');
      relative = slash == 0 || slash == std::string::npos ? "/" : relative.substr(0, slash);
    }
    return least;
  }
  return -1;
}

int64_t StoredBytesPerWeight(WeightFormat format, int64_t rows, int64_t cols) {
  return StoredMatrix::ValueBytes(format, rows, cols) + StoredMatrix::ScaleBytes(format, rows, cols);
}

}  // namespace

MemoryNeed EstimateNeed(const ep::MoeLayerSpec& spec, int64_t local_experts, int64_t cached_experts, bool caching,
                        WeightFormat format, bool mapped, int64_t tokens_per_rank, int world, bool reference) {
  const int64_t H = spec.hidden, F = spec.expert_width, E = spec.num_experts, k = spec.top_k;
  const int64_t T = tokens_per_rank, all = tokens_per_rank * world;
  MemoryNeed need;
  const int64_t expert = ep::ExpertBytes(spec, format);
  need.experts = std::max<int64_t>(0, local_experts - cached_experts) * expert;
  if (caching) need.cache = need.experts;
  if (spec.shared_width > 0) {
    need.shared = (spec.shared_mlp.gated() ? 2 : 1) * StoredBytesPerWeight(format, spec.shared_width, H) +
                  StoredBytesPerWeight(format, H, spec.shared_width);
  }
  if (mapped) need.mapped = need.experts + need.shared;
  // fp32: x and y, router logits, sent copies, received rows and partial
  // sums, gathered rows and expert outputs, the FFN's activations and tile.
  const int64_t floats = 2 * T * H + T * E + T * k * H + 2 * all * H + 2 * all * H + 2 * all * F +
                         64 * std::max(F, H) + 2 * T * std::max<int64_t>(spec.shared_width, 1);
  need.buffers = floats * 4;
  if (reference) {
    // Every expert (mapped: the same pages as the ranks'), one expert in
    // fp32 at a time, the gathered tokens and the double accumulators.
    const int64_t layer = E * expert;
    need.reference = layer + 3 * F * H * 4 + 3 * all * H * 4 + all * H * 8;
    if (mapped) need.mapped += layer;
  }
  return need;
}

int64_t PeakResidentBytes() { return ProcessStatusBytes("VmHWM"); }

MemoryLimits ReadMemoryLimits() {
  MemoryLimits limits;
  struct rlimit rl {};
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    const int64_t used = ProcessStatusBytes("VmSize");
    limits.address_space = std::max<int64_t>(0, static_cast<int64_t>(rl.rlim_cur) - std::max<int64_t>(0, used));
  }
  limits.cgroup = CgroupAvailable();
  limits.mem_available = MemAvailableBytes();
  return limits;
}

absl::Status CheckMemoryFits(const ep::MoeLayerSpec& spec, const MemoryNeed& need, WeightFormat format,
                             transport::Transport& t, Deadline deadline) {
  const int rank = t.rank(), world = t.world_size();
  const MemoryLimits limits = ReadMemoryLimits();
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) name[0] = '\0';
  MOEX_ASSIGN_OR_RETURN(std::vector<std::string> hosts, transport::AllGatherStrings(t, name, deadline));
  // Address space also goes to the threads' malloc arenas (64 MiB reserved
  // each), shared-memory segments and what the libraries map as they run:
  // measured at 110-210 MiB beyond the estimate for a 2-rank run over Open MPI and UCX here.
  constexpr int64_t kAddressSpaceMargin = int64_t{256} << 20;
  const bool own_short = limits.address_space >= 0 && need.total() + kAddressSpaceMargin > limits.address_space;
  // Each rank's (anonymous, mapped) need, whether it is short of address
  // space, and the host memory it sees: gathered, so that every rank judges
  // every host alike (by the least any of its ranks saw).
  int64_t host_limit = -1;
  std::string host_limit_name;
  for (const auto& [value, what] : {std::pair{limits.mem_available, "MemAvailable"}, std::pair{limits.cgroup, "the cgroup's memory.max"}}) {
    if (value >= 0 && (host_limit < 0 || value < host_limit)) {
      host_limit = value;
      host_limit_name = what;
    }
  }
  std::vector<double> mine = {static_cast<double>(need.total() - need.mapped), static_cast<double>(need.mapped),
                              own_short ? 1.0 : 0.0, static_cast<double>(host_limit)};
  std::vector<double> all(4 * world);
  MOEX_RETURN_IF_ERROR(t.AllGather(std::span<const double>(mine), std::span<double>(all), deadline));
  // A host's ranks share its memory and (as a job's ranks do) its cgroup;
  // mapped pages are the checkpoint's, held once however many map them.
  const int64_t layer_bytes = spec.num_experts * ep::ExpertBytes(spec, format) + need.shared;
  struct Host {
    double anonymous = 0, mapped = 0, limit = -1;
    int ranks = 0;
  };
  std::map<std::string, Host> per_host;
  for (int r = 0; r < world; ++r) {
    Host& h = per_host[hosts[r]];
    h.anonymous += all[4 * r];
    h.mapped += all[4 * r + 1];
    const double limit = all[4 * r + 3];
    if (limit >= 0 && (h.limit < 0 || limit < h.limit)) h.limit = limit;
    ++h.ranks;
  }
  auto host_need = [&](const std::string& host) {
    const Host& h = per_host[host];
    return static_cast<int64_t>(h.anonymous + std::min<double>(h.mapped, static_cast<double>(layer_bytes)));
  };
  auto host_short = [&](const std::string& host) {
    return per_host[host].limit >= 0 && host_need(host) > static_cast<int64_t>(per_host[host].limit);
  };
  std::vector<int> short_ranks;
  for (int r = 0; r < world; ++r) {
    if (all[4 * r + 2] > 0 || host_short(hosts[r])) short_ranks.push_back(r);
  }
  if (short_ranks.empty()) return absl::OkStatus();
  const std::string parts = StrCat(
      FormatBytes(static_cast<double>(need.experts)), " of experts (", WeightFormatName(format), ")",
      need.cache > 0 ? StrCat(", ", FormatBytes(static_cast<double>(need.cache)), " of their copy in the weight cache") : "",
      need.shared > 0 ? StrCat(", ", FormatBytes(static_cast<double>(need.shared)), " shared expert") : "",
      ", ", FormatBytes(static_cast<double>(need.buffers)), " of buffers",
      need.reference > 0 ? StrCat(", ", FormatBytes(static_cast<double>(need.reference)), " for --check") : "");
  const std::string smaller =
      format == WeightFormat::kMXFP4 ? "" : ", or experts in a smaller dtype (fp8: 1 byte a weight, mxfp4: about 0.53)";
  if (own_short) {
    return absl::ResourceExhaustedError(StrCat(
        "does not fit in memory: needs ", FormatBytes(static_cast<double>(need.total() + kAddressSpaceMargin)), " (", parts,
        ", 256 MiB for threads and libraries) of address space; ",
        FormatBytes(static_cast<double>(limits.address_space)),
        " is left under its RLIMIT_AS (ulimit -v); nothing was loaded. It would fit with a higher ulimit -v, fewer "
        "experts a rank (more ranks)", smaller));
  }
  const std::string host = hosts[rank];
  if (host_short(host)) {
    const int64_t limit = static_cast<int64_t>(per_host[host].limit);
    if (limit != host_limit) host_limit_name = "the least a rank of this host saw";
    const double hosts_needed = std::ceil(static_cast<double>(host_need(host)) / std::max<double>(1.0, static_cast<double>(limit)));
    return absl::ResourceExhaustedError(StrCat(
        "does not fit in memory: needs ", FormatBytes(static_cast<double>(need.total())), " (", parts, "); the ",
        per_host[host].ranks, " rank(s) on host ", host, " need ", FormatBytes(static_cast<double>(host_need(host))),
        " together and ", FormatBytes(static_cast<double>(limit)), " is available (", host_limit_name,
        "); nothing was loaded. It would fit spread over about ", static_cast<int64_t>(hosts_needed) * per_host[host].ranks,
        " ranks on ", static_cast<int64_t>(hosts_needed),
        " hosts like this one (more ranks on this host do not help: they share its memory)", smaller));
  }
  std::string which;
  for (size_t i = 0; i < short_ranks.size() && i < 8; ++i) which += StrCat(i ? ", " : "", short_ranks[i]);
  if (short_ranks.size() > 8) which += StrCat(" and ", short_ranks.size() - 8, " more");
  return absl::ResourceExhaustedError(StrCat("stopping before loading: rank(s) ", which,
                                             " do not fit in memory (their lines say why); this rank needs ",
                                             FormatBytes(static_cast<double>(need.total()))));
}

}  // namespace moex::run
