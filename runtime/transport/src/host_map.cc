#include "moex/transport/host_map.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "absl/strings/str_join.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/transport/gather_strings.h"

namespace moex::transport {
namespace {

std::string ThisHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

std::string ProbePath(const std::string& directory, uint64_t nonce, int rank) {
  char name[96];
  std::snprintf(name, sizeof(name), "/moex-probe-%016llx-%d", static_cast<unsigned long long>(nonce), rank);
  return directory + name;
}

}  // namespace

HostMap HostMap::OneHost(int rank, int world_size, const std::string& host_name) {
  HostMap map;
  map.rank_ = rank;
  map.num_hosts_ = 1;
  map.host_of_.assign(world_size, 0);
  map.host_names_.assign(world_size, host_name);
  map.probe_errors_.assign(world_size, "");
  return map;
}

absl::StatusOr<HostMap> HostMap::Probe(Transport& t, const std::string& directory, Deadline deadline) {
  const int world = t.world_size(), me = t.rank();
  // One name space per probe: rank 0's random number.
  std::vector<int64_t> nonce(1, 0);
  if (me == 0) nonce[0] = static_cast<int64_t>((uint64_t{std::random_device()()} << 30 ^ std::random_device()()) >> 2);
  MOEX_RETURN_IF_ERROR(t.AllReduceSum(std::span<int64_t>(nonce), deadline));

  // 1. Each rank makes its file.
  const std::string own = ProbePath(directory, static_cast<uint64_t>(nonce[0]), me);
  std::string error;
  int fd = open(own.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    error = StrCat("cannot make ", own, ": ", std::strerror(errno));
  } else {
    close(fd);
  }
  MOEX_RETURN_IF_ERROR(t.Barrier(deadline));

  // 2. Every rank looks for every other rank's file in its own directory.
  std::vector<double> sees(world, 0.0), all(static_cast<size_t>(world) * world);
  for (int r = 0; r < world; ++r) {
    struct stat info;
    sees[r] = r == me || stat(ProbePath(directory, static_cast<uint64_t>(nonce[0]), r).c_str(), &info) == 0 ? 1 : 0;
  }
  // A rank sends its row only after it has looked: once the gather is
  // done, nobody looks any more and the file can go.
  absl::Status gathered = t.AllGather(sees, all, deadline);
  if (error.empty()) unlink(own.c_str());
  MOEX_RETURN_IF_ERROR(gathered);

  HostMap map;
  map.rank_ = me;
  MOEX_ASSIGN_OR_RETURN(map.host_names_, AllGatherStrings(t, ThisHostName(), deadline));
  MOEX_ASSIGN_OR_RETURN(map.probe_errors_, AllGatherStrings(t, error, deadline));
  // Each rank joins the host of the lowest rank it shares files with both
  // ways (every rank computes this from the same matrix).
  auto mutual = [&](int a, int b) { return all[a * world + b] != 0 && all[b * world + a] != 0; };
  map.host_of_.assign(world, -1);
  for (int r = 0; r < world; ++r) {
    if (map.host_of_[r] >= 0) continue;
    map.host_of_[r] = map.num_hosts_;
    for (int p = r + 1; p < world; ++p) {
      if (map.host_of_[p] < 0 && mutual(r, p)) map.host_of_[p] = map.num_hosts_;
    }
    ++map.num_hosts_;
  }
  return map;
}

std::vector<int> HostMap::ranks_on_host(int host) const {
  std::vector<int> ranks;
  for (int r = 0; r < world_size(); ++r) {
    if (host_of_[r] == host) ranks.push_back(r);
  }
  return ranks;
}

std::string HostMap::Describe() const {
  const int world = world_size();
  const std::string ranks = StrCat(world, world == 1 ? " rank" : " ranks");
  if (num_hosts_ == 1) return StrCat(ranks, " on one host (", host_names_[0], ")");
  std::vector<std::string> hosts;
  for (int h = 0; h < num_hosts_; ++h) {
    std::vector<int> on = ranks_on_host(h);
    hosts.push_back(StrCat(host_names_[on[0]], on.size() == 1 ? " (rank " : " (ranks ", absl::StrJoin(on, ", "), ")"));
  }
  return StrCat(ranks, " on ", num_hosts_, " hosts: ", absl::StrJoin(hosts, ", "));
}

}  // namespace moex::transport
