// Which ranks share a shared-memory directory (/dev/shm) with which: the
// ranks that can map each other's segments (transport/shared_segments.h),
// i.e. that run on one host, in one container.
//
// A probe, not a comparison of host names (two containers on one machine
// may share a name but not /dev/shm; two machines may share a name): each
// rank makes a uniquely named file in its directory, and every rank looks
// for every other rank's file in its own. Two ranks are on one host when
// each sees the other's file. The files are gone when Probe returns.
//
// This is what a per-peer choice of path rests on: peers on this host
// through shared memory, the others through the network.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/transport/transport.h"

namespace moex::transport {

class HostMap {
 public:
  // Collective. `directory` is where this rank makes its probe file
  // (normally /dev/shm on every rank). A rank that cannot make it shares a
  // host with nobody, and probe_error() says why; that is not an error here.
  static absl::StatusOr<HostMap> Probe(Transport& transport, const std::string& directory, Deadline deadline);

  // Every rank on one host named `host_name`, without a probe (for a world
  // of one, and for tests).
  static HostMap OneHost(int rank, int world_size, const std::string& host_name);

  int rank() const { return rank_; }
  int world_size() const { return static_cast<int>(host_of_.size()); }
  int num_hosts() const { return num_hosts_; }
  bool all_on_one_host() const { return num_hosts_ == 1; }
  // Hosts are numbered 0, 1, ... in the order of their lowest rank, so
  // every rank numbers them alike.
  int host_of(int rank) const { return host_of_[rank]; }
  bool same_host(int a, int b) const { return host_of_[a] == host_of_[b]; }
  std::vector<int> ranks_on_host(int host) const;
  // The ranks that share this rank's directory, this one included.
  std::vector<int> local_ranks() const { return ranks_on_host(host_of_[rank_]); }
  // What gethostname() said on `rank` (for messages; not what decides).
  const std::string& host_name(int rank) const { return host_names_[rank]; }
  // Why `rank` could not make its probe file, or "".
  const std::string& probe_error(int rank) const { return probe_errors_[rank]; }

  // "4 ranks on one host (node1)", or
  // "4 ranks on 2 hosts: node1 (ranks 0, 1), node2 (ranks 2, 3)".
  std::string Describe() const;

 private:
  HostMap() = default;
  int rank_ = 0;
  int num_hosts_ = 0;
  std::vector<int> host_of_;
  std::vector<std::string> host_names_;
  std::vector<std::string> probe_errors_;
};

}  // namespace moex::transport
