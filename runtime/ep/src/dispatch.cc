// The dispatcher's options, its creation (where the path is chosen, once,
// by every rank together), and what the paths share: the checks at the
// entry of Dispatch and Combine, the records' pairs.
#include "moex/ep/dispatch.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_join.h"
#include "dispatch_internal.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/transport/gather_strings.h"
#include "moex/transport/host_map.h"

namespace moex::ep {

std::string_view DispatchPathName(DispatchPath path) {
  switch (path) {
    case DispatchPath::kAuto: return "auto";
    case DispatchPath::kSharedMemory: return "shared memory";
    case DispatchPath::kAllToAllV: return "all-to-all-v";
    case DispatchPath::kPerPeer: return "per peer";
    case DispatchPath::kHierarchical: return "hierarchical";
  }
  return "?";
}

absl::StatusOr<DispatchOptions> DispatchOptions::FromEnvironment() {
  DispatchOptions options;
  const char* intranode = std::getenv("MOEX_INTRANODE");
  const std::string_view value = intranode == nullptr ? "" : intranode;
  if (value == "0") {
    options.path = DispatchPath::kAllToAllV;
  } else if (value == "1") {
    options.path = DispatchPath::kSharedMemory;
  } else if (!value.empty() && value != "auto") {
    return absl::InvalidArgumentError(StrCat("MOEX_INTRANODE='", value, "' is not one of 0 (all-to-all-v), "
                                             "1 (shared memory), auto"));
  }
  MOEX_RETURN_IF_ERROR(options.Validate());
  return options;
}

absl::StatusOr<DispatchOptions> DispatchOptions::FromEnvironment(std::string_view dispatch) {
  MOEX_ASSIGN_OR_RETURN(DispatchOptions options, FromEnvironment());
  if (dispatch == "auto") return options;
  if (dispatch != "flat" && dispatch != "hierarchical") {
    return absl::InvalidArgumentError(StrCat("--dispatch '", dispatch, "' is not one of auto, flat, hierarchical"));
  }
  if (options.path != DispatchPath::kAuto) {
    return absl::InvalidArgumentError(StrCat("--dispatch ", dispatch, " and MOEX_INTRANODE=", std::getenv("MOEX_INTRANODE"),
                                             " both choose the path: unset MOEX_INTRANODE"));
  }
  if (dispatch == "flat") options.flat = true;
  else options.path = DispatchPath::kHierarchical;
  return options;
}

absl::Status DispatchOptions::Validate() const {
  if (path != DispatchPath::kAuto && path != DispatchPath::kSharedMemory && path != DispatchPath::kAllToAllV &&
      path != DispatchPath::kPerPeer && path != DispatchPath::kHierarchical) {
    return absl::InvalidArgumentError(StrCat("dispatch options: path ", static_cast<int>(path), " is not a path"));
  }
  if (dtype != DispatchDtype::kFp32 && dtype != DispatchDtype::kFp8) {
    return absl::InvalidArgumentError(StrCat("dispatch options: dtype ", static_cast<int>(dtype), " is not a dtype"));
  }
  // The segment options matter only where shared memory may be used.
  if (path != DispatchPath::kAllToAllV) MOEX_RETURN_IF_ERROR(shared_memory.Validate());
  return absl::OkStatus();
}

int64_t DispatchResult::first_row_from(int source) const {
  int64_t row = 0;
  for (int s = 0; s < source; ++s) row += recv_tokens[s];
  return row;
}

namespace dispatch_internal {

void FillPairs(const Placement& placement, const DispatchLayout& layout, const float* topk_weights, int64_t t,
               int r, int32_t* slots, float* weights) {
  const int64_t k = layout.top_k;
  for (int64_t j = 0; j < k; ++j) {
    int64_t slot = layout.topk_slot[t * k + j];
    bool here = placement.slot_rank(slot) == r;
    slots[j] = here ? static_cast<int32_t>(slot - placement.first_slot(r)) : -1;
    weights[j] = here ? topk_weights[t * k + j] : 0.0f;
  }
}

int64_t SizeReceived(DispatchResult* out, int64_t rows, int64_t k, int64_t local_slots, int me) {
  out->recv_rows.resize(rows);
  out->recv_local_slot.resize(rows * k);
  out->recv_weights.resize(rows * k);
  out->num_recv_tokens_per_expert.assign(local_slots, 0);
  int64_t own_begin = 0;
  for (int d = 0; d < me; ++d) own_begin += out->send_tokens[d];
  return own_begin;
}

absl::Status FillReceived(const Placement& placement, const DispatchLayout& layout, const Tensor& x,
                          const float* topk_weights, int me, int64_t own_begin,
                          const std::vector<const float*>& first_record, int64_t record, DispatchResult* out) {
  const int world = layout.world_size;
  const int64_t k = layout.top_k, H = x.dim(1), local_slots = placement.num_local_slots(me);
  int64_t i = 0;
  for (int s = 0; s < world; ++s) {
    for (int64_t n = 0; n < out->recv_tokens[s]; ++n, ++i) {
      int32_t* slots = &out->recv_local_slot[i * k];
      float* weights = &out->recv_weights[i * k];
      if (s == me) {
        const int64_t t = out->send_order[own_begin + n];
        out->recv_rows[i] = x.row(t);
        FillPairs(placement, layout, topk_weights, t, me, slots, weights);
      } else {
        TakeRecord(first_record[s] + n * record, H, k, i, out, slots, weights);
      }
      MOEX_RETURN_IF_ERROR(CountSlots(slots, k, local_slots, me, s, out));
    }
  }
  return absl::OkStatus();
}

absl::Status CountSlots(const int32_t* slots, int64_t k, int64_t local_slots, int me, int source,
                        DispatchResult* out) {
  for (int64_t j = 0; j < k; ++j) {
    if (slots[j] < -1 || slots[j] >= local_slots) {
      return absl::DataLossError(StrCat("dispatch on rank ", me, ": received slot ", slots[j], " from rank ", source,
                                        ", outside this rank's ", local_slots, " slots"));
    }
    if (slots[j] >= 0) ++out->num_recv_tokens_per_expert[slots[j]];
  }
  return absl::OkStatus();
}

}  // namespace dispatch_internal

absl::Status Dispatcher::AgreeOnPath(transport::Transport& t, const DispatchOptions& options, Deadline deadline) {
  const int world = t.world_size(), me = t.rank();
  const absl::Status valid = options.Validate();
  // Each rank's path, or -1 where its options are invalid: a rank that
  // returned alone would leave the others waiting in the next collective.
  // The path, under kAuto whether flat was asked for, and the dtype:
  // 32 x dtype + 16 x flat + path.
  std::vector<double> mine = {valid.ok() ? static_cast<double>(options.path) + (options.flat ? 16.0 : 0.0) +
                                               32.0 * static_cast<double>(options.dtype)
                                         : -1.0},
                      all(world);
  MOEX_RETURN_IF_ERROR(t.AllGather(mine, all, deadline));
  if (!valid.ok()) return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": ", valid.message()));
  std::vector<std::string> asked;
  bool agree = true;
  for (int r = 0; r < world; ++r) {
    if (all[r] < 0) {
      return absl::InvalidArgumentError(
          StrCat("dispatch on rank ", me, ": rank ", r, "'s dispatch options are invalid (rank ", r, " says why)"));
    }
    agree &= all[r] == all[0];
    const int code = static_cast<int>(all[r]);
    asked.push_back(StrCat("rank ", r, " ", DispatchPathName(static_cast<DispatchPath>(code % 16)),
                           code % 32 >= 16 ? " (flat)" : "", code >= 32 ? " fp8" : ""));
  }
  if (!agree) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": the ranks ask for different paths or dtypes (",
                                             absl::StrJoin(asked, ", "),
                                             "); MOEX_INTRANODE, --dispatch and --dispatch-dtype must be the same "
                                             "on every rank"));
  }
  return absl::OkStatus();
}

namespace {

// "segments in /dev/shm", or where the ranks' directories differ (tests
// that stand ranks on "hosts" by directory), each with its ranks: the same
// words on every rank.
absl::StatusOr<std::string> SegmentDirectories(transport::Transport& t, const std::string& mine,
                                               Deadline deadline) {
  MOEX_ASSIGN_OR_RETURN(std::vector<std::string> all, transport::AllGatherStrings(t, mine, deadline));
  std::vector<std::pair<std::string, std::vector<int>>> groups;  // in order of their first rank
  for (int r = 0; r < static_cast<int>(all.size()); ++r) {
    auto same = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == all[r]; });
    if (same == groups.end()) groups.push_back({all[r], {r}});
    else same->second.push_back(r);
  }
  if (groups.size() == 1) return StrCat("segments in ", groups[0].first);
  std::vector<std::string> parts;
  for (const auto& [directory, ranks] : groups) {
    parts.push_back(StrCat(directory, ranks.size() == 1 ? " (rank " : " (ranks ", absl::StrJoin(ranks, ", "), ")"));
  }
  return StrCat("segments in ", absl::StrJoin(parts, ", "));
}

}  // namespace

absl::Status Dispatcher::TrySegments(transport::Transport& t, DispatchPath asked, Deadline deadline,
                                     std::string* why_not, bool* failed) {
  const transport::SharedSegmentsOptions& shm = options_.shared_memory;
  MOEX_ASSIGN_OR_RETURN(transport::HostMap hosts, transport::HostMap::Probe(t, shm.directory, deadline));
  SetHosts(hosts);
  std::vector<std::string> probe_errors;
  for (int r = 0; r < t.world_size(); ++r) {
    if (!hosts.probe_error(r).empty()) probe_errors.push_back(StrCat("rank ", r, " ", hosts.probe_error(r)));
  }
  if (!probe_errors.empty()) {
    *why_not = absl::StrJoin(probe_errors, "; ");
    *failed = true;
    return absl::OkStatus();
  }
  // Every rank decides from the same map.
  DispatchPath path = asked;
  if (asked == DispatchPath::kAuto) {
    path = hosts.all_on_one_host()  ? DispatchPath::kSharedMemory
           : options_.flat          ? DispatchPath::kPerPeer
                                    : DispatchPath::kHierarchical;
    if (hosts.num_hosts() == hosts.world_size()) {
      *why_not = StrCat("every rank is alone on its host (", hosts.Describe(), ")");
      *failed = false;
      return absl::OkStatus();
    }
  }
  if (path == DispatchPath::kSharedMemory && !hosts.all_on_one_host()) {
    *why_not = StrCat("not every rank shares ", shm.directory, ": ", hosts.Describe());
    *failed = false;
    return absl::OkStatus();
  }
  MOEX_ASSIGN_OR_RETURN(std::string directories, SegmentDirectories(t, shm.directory, deadline));
  MOEX_ASSIGN_OR_RETURN(shm_, transport::SharedSegments::Create(t, shm, hosts.local_ranks(), deadline));
  // The first segments now, so that a directory that cannot hold them
  // shows here rather than at the first step.
  const std::vector<int64_t> first(t.world_size(), 1);
  absl::Status reserved = shm_->Reserve(t, first, deadline);
  if (!reserved.ok()) {
    shm_.reset();
    if (!absl::IsResourceExhausted(reserved)) return reserved;  // the transport failed
    *why_not = std::string(reserved.message());
    *failed = true;
    return absl::OkStatus();
  }
  path_ = path;
  switch (path) {
    case DispatchPath::kSharedMemory:
      path_reason_ = StrCat("shared memory: ", hosts.Describe(), ", ", directories);
      break;
    case DispatchPath::kHierarchical:
      path_reason_ = StrCat("hierarchical: one row per (token, remote host) by all-to-all-v, forwarded within a "
                            "host through shared memory: ", hosts.Describe(), ", ", directories);
      break;
    default:
      path_reason_ = StrCat("per peer: shared memory within a host, all-to-all-v between hosts: ", hosts.Describe(),
                            ", ", directories);
  }
  return absl::OkStatus();
}

void Dispatcher::SetHosts(const transport::HostMap& hosts) {
  const int world = hosts.world_size();
  num_hosts_ = hosts.num_hosts();
  several_hosts_ = num_hosts_ > 1;
  host_of_.assign(world, 0);
  local_index_.assign(world, 0);
  host_ranks_.assign(num_hosts_, {});
  host_names_.assign(num_hosts_, "");
  for (int r = 0; r < world; ++r) {
    host_of_[r] = hosts.host_of(r);
    local_index_[r] = static_cast<int>(host_ranks_[host_of_[r]].size());
    host_ranks_[host_of_[r]].push_back(r);
    if (host_names_[host_of_[r]].empty()) host_names_[host_of_[r]] = hosts.host_name(r);
  }
}

std::string Dispatcher::DescribeRanks(const std::vector<int>& ranks) const {
  std::vector<std::string> parts;
  for (int h = 0; h < num_hosts_; ++h) {
    std::vector<int> here;
    for (int r : ranks) {
      if (r >= 0 && r < world_size_ && host_of_[r] == h) here.push_back(r);
    }
    if (here.empty()) continue;
    const size_t of = host_ranks_[h].size();
    const std::string name = host_names_[h].empty() ? StrCat("#", h) : host_names_[h];
    parts.push_back(StrCat(here.size() == 1 ? "rank " : "ranks ", absl::StrJoin(here, ", "), " on host ", name, " (",
                           here.size() == of ? (of == 1 ? "its only rank" : "every rank of it")
                                             : StrCat(here.size(), " of its ", of, " ranks"),
                           ")"));
  }
  return absl::StrJoin(parts, "; ");
}

void Dispatcher::CountInternode(const DispatchLayout& layout, int64_t hidden, DispatchResult* out) const {
  const int world = world_size_, me = rank_;
  out->internode_floor_bytes = 0;
  std::vector<uint8_t> seen(num_hosts_);
  for (int64_t t = 0; t < layout.num_tokens; ++t) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int d = 0; d < world; ++d) {
      if (!layout.is_token_in_rank[t * world + d] || host_of_[d] == host_of_[me] || seen[host_of_[d]]) continue;
      seen[host_of_[d]] = 1;
      out->internode_floor_bytes += WireRowBytes(options_.dtype, hidden);
    }
  }
  if (out->path == DispatchPath::kHierarchical) return;  // counted as it went
  out->internode_bytes_sent = 0;
  for (int d = 0; d < world; ++d) {
    if (host_of_[d] != host_of_[me]) {
      out->internode_bytes_sent +=
          out->send_tokens[d] * dispatch_internal::WireRecordBytes(options_.dtype, hidden, layout.top_k);
    }
  }
}

absl::StatusOr<Dispatcher> Dispatcher::Create(transport::Transport& t, DispatchOptions options, Deadline deadline) {
  MOEX_RETURN_IF_ERROR(AgreeOnPath(t, options, deadline));
  const int me = t.rank(), world = t.world_size();
  Dispatcher d(std::move(options), me, world);
  const DispatchPath asked = d.options_.path;
  d.path_ = DispatchPath::kAllToAllV;
  d.SetHosts(transport::HostMap::OneHost(me, world, ""));
  if (asked == DispatchPath::kAllToAllV) {
    // Where the ranks are still counts: the bytes that cross between hosts
    // (probed where a segment directory could be, i.e. an absolute path).
    if (world > 1 && d.options_.shared_memory.Validate().ok()) {
      MOEX_ASSIGN_OR_RETURN(transport::HostMap hosts,
                            transport::HostMap::Probe(t, d.options_.shared_memory.directory, deadline));
      d.SetHosts(hosts);
    }
    d.path_reason_ = "all-to-all-v: asked for";
    return d;
  }
  if (asked == DispatchPath::kAuto && world == 1) {
    d.path_reason_ = "all-to-all-v: one rank, nothing crosses between ranks";
    return d;
  }
  std::string why_not;
  bool failed = false;
  MOEX_RETURN_IF_ERROR(d.TrySegments(t, asked, deadline, &why_not, &failed));
  if (why_not.empty()) return d;
  if (asked != DispatchPath::kAuto) {
    return absl::FailedPreconditionError(StrCat("dispatch on rank ", me, ": the ",
                                                asked == DispatchPath::kPerPeer       ? "per-peer"
                                                : asked == DispatchPath::kHierarchical ? "hierarchical"
                                                                                       : "shared-memory",
                                                " path was asked for and cannot be set up: ", why_not));
  }
  // Where the ranks are (every one alone on its host) is the all-to-all-v
  // path's own case; a failure is a fall-back from shared memory, and says
  // so (also on stderr, once: a command's report may show only the path).
  d.path_reason_ = StrCat("all-to-all-v: ", why_not, failed ? ", fell back" : "");
  if (failed && me == 0) std::fprintf(stderr, "moex: dispatch: %s\n", d.path_reason_.c_str());
  return d;
}

absl::Status Dispatcher::CheckTransport(const transport::Transport& t, std::string_view what) const {
  if (t.rank() != rank_ || t.world_size() != world_size_) {
    return absl::InvalidArgumentError(StrCat(what, " on rank ", t.rank(), ": the dispatcher was created for rank ",
                                             rank_, " of ", world_size_, ", the transport is rank ", t.rank(), " of ",
                                             t.world_size()));
  }
  return absl::OkStatus();
}

absl::Status Dispatcher::LeaveSharedMemory(const absl::Status& cannot_grow, int64_t dispatch) {
  if (options_.path != DispatchPath::kAuto || !absl::IsResourceExhausted(cannot_grow)) {
    return absl::Status(cannot_grow.code(), StrCat("dispatch on rank ", rank_, ": shared memory cannot grow for ",
                                                   "dispatch #", dispatch, ": ", cannot_grow.message()));
  }
  shm_.reset();
  path_ = DispatchPath::kAllToAllV;
  path_reason_ = StrCat("all-to-all-v: ", cannot_grow.message(), ", fell back at dispatch #", dispatch);
  // Every rank falls back together; one says so, once.
  if (rank_ == 0) std::fprintf(stderr, "moex: dispatch: %s\n", path_reason_.c_str());
  return absl::OkStatus();
}

absl::StatusOr<bool> Dispatcher::ReserveSegments(transport::Transport& transport, const std::vector<int64_t>& need,
                                                 Deadline deadline) {
  absl::Status reserved = shm_->Reserve(transport, need, deadline);
  if (reserved.ok()) return true;
  // Every rank saw the same failure: all leave together, or all fail.
  MOEX_RETURN_IF_ERROR(LeaveSharedMemory(reserved, dispatches_));
  return false;
}

absl::Status Dispatcher::Dispatch(transport::Transport& transport, const Placement& placement, const Tensor& x,
                                  const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                                  DispatchResult* out) {
  MOEX_RETURN_IF_ERROR(CheckTransport(transport, "dispatch"));
  const int world = world_size_, me = rank_;
  const int64_t T = layout.num_tokens;
  if (placement.world_size() != world || layout.world_size != world) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": placement for ", placement.world_size(),
                                             " ranks, layout for ", layout.world_size, ", transport has ", world));
  }
  if (x.shape.size() != 2 || x.dim(0) != T) {
    return absl::InvalidArgumentError(StrCat("dispatch on rank ", me, ": x has shape ", ShapeString(x.shape),
                                             ", the layout has ", T, " tokens"));
  }
  ++dispatches_;
  // Every path moves (and points its own rows into) x as the wire gives it.
  const Tensor& rows = PrepareWire(x);
  absl::Status status;
  if (path_ == DispatchPath::kHierarchical) {
    status = DispatchHierarchical(transport, placement, rows, layout, topk_weights, deadline, out);
  } else if (UsesSegments()) {
    status = DispatchSegments(transport, placement, rows, layout, topk_weights, deadline, out);
  } else {
    status = DispatchAllToAllV(transport, placement, rows, layout, topk_weights, deadline, out);
  }
  MOEX_RETURN_IF_ERROR(status);
  CountInternode(layout, x.dim(1), out);
  return absl::OkStatus();
}

float* Dispatcher::PartialBuffer(const DispatchResult& received) {
  const int64_t n = received.num_recv() * received.hidden;
  float* out;
  if (received.path == path_ && UsesSegments() && shm_ != nullptr) {
    out = SharedPartialArea(received);
  } else {
    if (static_cast<int64_t>(partial_.size()) < n) partial_.resize(n);
    out = partial_.data();
  }
  std::fill(out, out + n, 0.0f);
  return out;
}

absl::Status Dispatcher::Combine(transport::Transport& transport, const DispatchResult& received,
                                 const Tensor& partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  const int64_t H = received.hidden, R = received.num_recv();
  if (partial.shape.size() != 2 || partial.dim(0) < R || partial.dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("combine on rank ", rank_, ": partial sums have shape ",
                                             ShapeString(partial.shape), ", expected ", ShapeString({R, H})));
  }
  return Combine(transport, received, partial.data(), y, bytes_sent, deadline);
}

absl::Status Dispatcher::Combine(transport::Transport& transport, const DispatchResult& received,
                                 const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline) {
  MOEX_RETURN_IF_ERROR(CheckTransport(transport, "combine"));
  const int64_t H = received.hidden;
  if (y->shape.size() != 2 || y->dim(0) != received.num_tokens || y->dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("combine on rank ", rank_, ": the output has shape ",
                                             ShapeString(y->shape), ", expected ",
                                             ShapeString({received.num_tokens, H})));
  }
  if (received.path != path_) {
    return absl::FailedPreconditionError(StrCat("combine on rank ", rank_, ": the rows came by ",
                                                DispatchPathName(received.path), ", the dispatcher is now on ",
                                                DispatchPathName(path_), " (combine each dispatch before the next)"));
  }
  if (path_ == DispatchPath::kHierarchical) {
    return CombineHierarchical(transport, received, partial, y, bytes_sent, deadline);
  }
  absl::Status status = UsesSegments() ? CombineSegments(transport, received, partial, y, bytes_sent, deadline)
                                       : CombineAllToAllV(transport, received, partial, y, bytes_sent, deadline);
  MOEX_RETURN_IF_ERROR(status);
  combine_internode_bytes_ = 0;
  for (int r = 0; r < world_size_; ++r) {
    if (host_of_[r] != host_of_[rank_]) combine_internode_bytes_ += received.recv_tokens[r] * H * 4;
  }
  return absl::OkStatus();
}

}  // namespace moex::ep
