// Dispatch and combine, DeepEP-shaped.
//
//   dispatcher = Dispatcher::Create(transport, options, deadline)   the path, once
//   layout = GetDispatchLayout(placement, topk_idx, ...)            who goes where
//   dispatcher.Dispatch(transport, placement, x, layout, w, &received)
//   ...experts write per-token partial sums into PartialBuffer(received)...
//   dispatcher.Combine(transport, received, partial, &y)            sums back home
//
// A token crosses to a rank once, however many of that rank's experts it
// chose; it travels with its (local slot, weight) pairs for that rank, and
// one partial-sum vector per (token, rank) comes back. Dropless: every routed
// pair is served, there is no capacity factor.
//
// Three paths, chosen by Create, the same on every rank, with one contract:
// - shared memory (every rank shares this host's /dev/shm): each rank
//   writes its tokens' records straight into the receiving rank's area of
//   shared memory (transport/shared_segments.h), the experts write their
//   partial sums into their own rank's shared area, and each token's home
//   rank reads them from there as it adds them up: every byte crosses once,
//   with no packing and no receive-side copy; two transport barriers order
//   it.
// - per peer (ranks on several hosts, some sharing one): shared memory, as
//   above, between the ranks of each host, and the transport's all-to-all-v
//   (zero bytes to and from the ranks of this host) to the others, in the
//   same Dispatch and Combine calls.
// - hierarchical (node-aware, as DeepEP's internode kernels; ranks on
//   several hosts): a token crosses the network to a remote *host* once,
//   however many of that host's ranks it chose, to one rank there (its
//   gateway: the rank of that host whose local index is the sender's, modulo
//   the host's size), which forwards it to the host's ranks through shared
//   memory with the host's own tokens. In combine the gateway adds up the
//   host's partial sums of each forwarded token and sends one row per
//   (token, host) back over the network.
// - all-to-all-v: records are packed per destination and exchanged with the
//   transport's all-to-all-v, and so are the partial sums.
//
// On the flat paths (all but hierarchical), the received rows are
// source-rank-major: rank 0's tokens first, then rank 1's, ..., each rank's
// in its local token order, and this rank's own tokens at its own position.
// On the hierarchical path a "source" is the rank of this host that
// forwarded the row (its gateway): the rows are gateway-major, and a
// gateway's rows are ordered by the rank they came from (its own at its own
// position), each rank's in its token order. A token's visit to its own rank
// is never copied: its received row points into `x`. Rows from other ranks
// are used where they landed.
//
// The Dispatcher owns its send and receive buffers and reuses them, so a
// step allocates nothing once the sizes have been seen.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/placement/placement.h"
#include "moex/transport/host_map.h"
#include "moex/transport/shared_segments.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// The placement layer's type, by its short name in this layer.
using Placement = ::moex::placement::Placement;

struct DispatchLayout {
  int world_size = 0;
  int64_t num_tokens = 0;  // T, local tokens
  int64_t top_k = 0;       // k
  std::vector<int64_t> topk_slot;              // [T, k] physical slot of each routed expert
  std::vector<int64_t> num_tokens_per_rank;    // [W] distinct tokens sent to each rank
  std::vector<int64_t> num_tokens_per_expert;  // [S] routed (token, slot) pairs per slot
  std::vector<uint8_t> is_token_in_rank;       // [T, W]
};

// topk_idx [T, k] holds logical experts; `first_token` is the global index of
// local token 0 (it picks replicas).
DispatchLayout GetDispatchLayout(const Placement& placement, const int32_t* topk_idx,
                                 int64_t num_tokens, int64_t top_k, int64_t first_token);

enum class DispatchPath {
  // Shared memory when every rank shares this host's /dev/shm;
  // hierarchical (per peer with DispatchOptions::flat) when the ranks are on
  // several hosts and some host has two or more; all-to-all-v when every
  // rank is alone on its host, or the probe fails.
  kAuto,
  kSharedMemory,  // shared memory, or an error saying which rank cannot and why
  kAllToAllV,     // the transport's all-to-all-v, wherever the ranks are
  // Shared memory within a host, all-to-all-v between hosts; or an error
  // saying which rank cannot make its segments and why. Works for any
  // split of the ranks over hosts (one host: no all-to-all-v; every rank
  // alone: no shared memory but each rank's own partial-sum area).
  kPerPeer,
  // Node-aware: the network carries one row per (token, remote host);
  // shared memory within a host. Or an error saying which rank cannot make
  // its segments and why. Any split of the ranks over hosts.
  kHierarchical,
};
// "auto", "shared memory", "all-to-all-v", "per peer", "hierarchical".
std::string_view DispatchPathName(DispatchPath path);

// What a token's row is when it travels between hosts (the network legs of
// every path; rows within a host stay fp32):
// - kFp32: the row as it is, 4 bytes a value.
// - kFp8: DeepEP's format (kernels/fp8_rows.h): e4m3fn values with one fp32
//   scale a block of 128, H + 4 * ceil(H / 128) bytes (0.26x of fp32, 0.52x
//   of bf16). The layer's routed experts then see every token as the
//   receiver reads it back, on every rank and path alike (the own rank's and
//   shared memory's rows too), so a result does not depend on where its
//   experts live; the router and the shared expert see the row unquantised.
// Combine stays fp32.
enum class DispatchDtype { kFp32, kFp8 };
// "fp32", "fp8".
std::string_view DispatchDtypeName(DispatchDtype dtype);
// "fp32" or "fp8", or an error naming `flag` and the choices.
absl::StatusOr<DispatchDtype> ParseDispatchDtype(std::string_view name, std::string_view flag = "--dispatch-dtype");
// Bytes a row of `hidden` values takes on the wire.
int64_t WireRowBytes(DispatchDtype dtype, int64_t hidden);

struct DispatchOptions {
  DispatchPath path = DispatchPath::kAuto;
  // Under kAuto, ranks on several hosts (some sharing one) go hierarchical
  // unless `flat` (then per peer): `moex run --dispatch flat` keeps the flat
  // path for comparison.
  bool flat = false;
  // Where the shared-memory and per-peer paths keep their segments and how
  // large one may grow (a test points this at a directory that fails or a
  // small limit). The directory may differ between ranks: ranks whose
  // directories are not one (transport::HostMap probes it) are on
  // different hosts, which is how tests put in-process ranks on "hosts".
  transport::SharedSegmentsOptions shared_memory = {};
  // How rows cross between hosts (above). The same on every rank.
  DispatchDtype dtype = DispatchDtype::kFp32;

  // The defaults above, with the environment's say: MOEX_INTRANODE=0 asks
  // for all-to-all-v, =1 for shared memory, unset (or "auto") for kAuto.
  // The one place moex reads MOEX_INTRANODE.
  static absl::StatusOr<DispatchOptions> FromEnvironment();
  // The same with `moex run --dispatch`'s say: "auto", "flat" (never
  // hierarchical) or "hierarchical" (asked for); an error where
  // MOEX_INTRANODE already asks for a path.
  static absl::StatusOr<DispatchOptions> FromEnvironment(std::string_view dispatch);
  absl::Status Validate() const;
};

// What a rank received, and what combine needs to send the sums back.
struct DispatchResult {
  DispatchPath path = DispatchPath::kAuto;          // the path that filled it (never kAuto once filled)
  int64_t num_tokens = 0;                           // T of the dispatch: the rows of y in Combine
  int64_t hidden = 0;
  int64_t top_k = 0;
  std::vector<const float*> recv_rows;              // [R] each a row of H floats, in the path's order (above)
  std::vector<int32_t> recv_local_slot;             // [R, k] slot on this rank, or -1
  std::vector<float> recv_weights;                  // [R, k]
  std::vector<int64_t> num_recv_tokens_per_expert;  // [local slots]
  std::vector<int64_t> send_tokens;                 // [W] rows sent to each rank (self included)
  std::vector<int64_t> recv_tokens;                 // [W] rows received from each rank (self included)
  std::vector<int64_t> send_order;                  // local token of each sent row, destination-major
  int64_t bytes_sent = 0;                           // payload sent to other ranks
  // Of bytes_sent, what crossed to other hosts (every rank counted its own
  // host where the hosts could not be probed), and the floor of that:
  // distinct (token, remote host) pairs x WireRowBytes(dtype, hidden).
  int64_t internode_bytes_sent = 0;
  int64_t internode_floor_bytes = 0;
  // Shared-memory and per-peer paths: counts[s * W + d] tokens went from
  // rank s to rank d; hierarchical: rows gateway s forwarded to rank d of
  // its host.
  std::vector<int64_t> counts;
  // Hierarchical path: the network hop. Rows sent to each rank over the
  // network ([W], gateways only) and the local token of each, gateway-major;
  // rows forwarded for each rank ([W]); the rows this rank forwarded into
  // the host's areas, by receiver: item_order[n] is the n-th row sent, in
  // receiver-major order (send_tokens), as an item: own token t as t,
  // forwarded row f (in network arrival order) as T + f.
  std::vector<int64_t> net_send_tokens, net_recv_tokens, net_send_order, item_order;
  int64_t num_recv() const { return static_cast<int64_t>(recv_rows.size()); }
  // First row from rank `source` in recv_rows.
  int64_t first_row_from(int source) const;
};

class Dispatcher {
 public:
  // Collective over every rank of `transport`, with the same options'
  // path on every rank (else an error on every rank). Under kAuto the path
  // is decided together: every rank gets the same path() and
  // path_reason(), e.g.
  //   "shared memory: 4 ranks on one host (node1), segments in /dev/shm"
  //   "per peer: shared memory within a host, all-to-all-v between hosts:
  //    4 ranks on 2 hosts: node1 (ranks 0, 1), node2 (ranks 2, 3), segments in /dev/shm"
  //   "all-to-all-v: /dev/shm on rank 2: No space left on device (making a 1.00 MiB
  //    segment), fell back"
  // A fall-back (not a choice made because of where the ranks are) is also
  // printed once, by rank 0, to stderr. Under kSharedMemory and kPerPeer,
  // what stops the path is the error, naming the rank and the reason.
  static absl::StatusOr<Dispatcher> Create(transport::Transport& transport, DispatchOptions options,
                                           Deadline deadline);

  // `out` is reused across calls; its rows stay valid until the next
  // Dispatch and while `x` lives. `transport` is the one Create had.
  // Under kAuto, shared memory (on either path that uses it) that cannot
  // grow for this step's counts (every rank sees it together) moves every
  // rank to all-to-all-v, for good: path() and path_reason() say so, and
  // rank 0 prints it once.
  absl::Status Dispatch(transport::Transport& transport, const Placement& placement, const Tensor& x,
                        const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                        DispatchResult* out);

  // Where the experts should write the partial sums [R, H] of `received`
  // (zeroed here): in shared memory on the paths that use it, so that
  // combine moves nothing twice. Valid until the next Dispatch.
  float* PartialBuffer(const DispatchResult& received);
  // The partial sums [R, H] (rows in `received` order) go back along
  // `received`; `y` [T, H] gets the sum over ranks added to it: in rank
  // order on the flat paths; on the hierarchical path this host's ranks in
  // order, then one sum per remote host, hosts in their gateways' order
  // (deterministic, but not the flat paths' bits).
  // `bytes_sent` gets what this rank sent to (or left for) other ranks.
  // `partial` is best PartialBuffer(received); anything else is copied there.
  absl::Status Combine(transport::Transport& transport, const DispatchResult& received,
                       const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  absl::Status Combine(transport::Transport& transport, const DispatchResult& received,
                       const Tensor& partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);

  // Combine's bytes that crossed to other hosts, in the last Combine.
  int64_t last_combine_internode_bytes() const { return combine_internode_bytes_; }
  // Distinct hosts among the ranks (transport::HostMap's probe at Create;
  // a rank whose probe failed counts as a host of its own).
  int num_hosts() const { return num_hosts_; }
  // Where `ranks` are, by host, for a message about ranks that were lost:
  // "rank 3 on host node2 (1 of its 2 ranks)", "ranks 2, 3 on host node2
  // (every rank of it)"; hosts as gethostname() said on each.
  std::string DescribeRanks(const std::vector<int>& ranks) const;

  // "shared memory", "per peer", "hierarchical" or "all-to-all-v": never "auto".
  std::string_view path() const { return DispatchPathName(path_); }
  // Why this path, the same words on every rank.
  const std::string& path_reason() const { return path_reason_; }
  const DispatchOptions& options() const { return options_; }
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

 private:
  Dispatcher(DispatchOptions options, int rank, int world_size)
      : options_(std::move(options)), rank_(rank), world_size_(world_size) {}
  // Every rank asked for the same path (checked together).
  static absl::Status AgreeOnPath(transport::Transport& transport, const DispatchOptions& options, Deadline deadline);
  // Probes the hosts and sets up the segments of the path that `asked`
  // (kAuto, kSharedMemory or kPerPeer) leads to, or says why not
  // (`why_not`) and whether that is a failure to fall back from (`failed`:
  // a directory that cannot hold the segments) or just where the ranks
  // are (several hosts for kSharedMemory, every rank alone under kAuto).
  // An error only when the transport fails.
  absl::Status TrySegments(transport::Transport& transport, DispatchPath asked, Deadline deadline,
                           std::string* why_not, bool* failed);
  // Shared memory cannot grow (`cannot_grow`, the same on every rank):
  // under kAuto every rank moves to all-to-all-v (OK), else the error.
  absl::Status LeaveSharedMemory(const absl::Status& cannot_grow, int64_t dispatch);
  // Grows the segments to `need` (bytes per rank, collective): true, or
  // false where every rank has left shared memory for all-to-all-v (under
  // kAuto), or the error.
  absl::StatusOr<bool> ReserveSegments(transport::Transport& transport, const std::vector<int64_t>& need,
                                       Deadline deadline);
  bool UsesSegments() const {
    return path_ == DispatchPath::kSharedMemory || path_ == DispatchPath::kPerPeer ||
           path_ == DispatchPath::kHierarchical;
  }
  // Where every rank is (HostMap's numbering), for the byte counts of every
  // path and the segments of those that use them.
  void SetHosts(const transport::HostMap& hosts);
  // internode_bytes_sent and internode_floor_bytes of `out`, for a flat path.
  void CountInternode(const DispatchLayout& layout, int64_t hidden, DispatchResult* out) const;
  absl::Status CheckTransport(const transport::Transport& transport, std::string_view what) const;

  // dispatch_shared.cc: the shared-memory and per-peer paths
  absl::Status DispatchSegments(transport::Transport& transport, const Placement& placement, const Tensor& x,
                                const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                                DispatchResult* out);
  absl::Status CombineSegments(transport::Transport& transport, const DispatchResult& received,
                               const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  float* SharedPartialArea(const DispatchResult& received) const;
  // dispatch_hierarchical.cc
  absl::Status DispatchHierarchical(transport::Transport& transport, const Placement& placement, const Tensor& x,
                                    const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                                    DispatchResult* out);
  absl::Status CombineHierarchical(transport::Transport& transport, const DispatchResult& received,
                                   const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  // The gateway on `host` of `source`'s tokens (itself on its own host).
  int GatewayOf(int source, int host) const;
  // dispatch_wire.cc: rows between hosts in options_.dtype.
  // x as every path and the experts see it: x itself (fp32), or each row
  // read back from its fp8 form (kept for WriteWireRow).
  const Tensor& PrepareWire(const Tensor& x);
  // Local token t's row in wire form (WireRowBytes) at `dst`; `x` is what
  // PrepareWire returned.
  void WriteWireRow(const Tensor& x, int64_t t, std::byte* dst) const;
  // Where `records` wire records should land; after the exchange,
  // DecodeWireRecords leaves them in recv_ as fp32 records.
  std::byte* WireReceiveBuffer(int64_t records, int64_t hidden, int64_t top_k);
  void DecodeWireRecords(int64_t records, int64_t hidden, int64_t top_k);
  // dispatch_alltoallv.cc
  absl::Status DispatchAllToAllV(transport::Transport& transport, const Placement& placement, const Tensor& x,
                                 const DispatchLayout& layout, const float* topk_weights, Deadline deadline,
                                 DispatchResult* out);
  absl::Status CombineAllToAllV(transport::Transport& transport, const DispatchResult& received,
                                const float* partial, Tensor* y, int64_t* bytes_sent, Deadline deadline);
  // Both: the partial sums [R, H] of the ranks for which `over_network(r)`
  // go back to them by all-to-all-v, out of `partial` in place; what comes
  // back lands in `back_`, rank order. Returns the bytes this rank sent.
  absl::StatusOr<int64_t> ReturnPartials(transport::Transport& transport, const DispatchResult& received,
                                         const float* partial, const std::function<bool(int)>& over_network,
                                         Deadline deadline);

  DispatchOptions options_;
  int rank_ = 0;
  int world_size_ = 0;
  DispatchPath path_ = DispatchPath::kAllToAllV;
  std::string path_reason_;
  int64_t dispatches_ = 0;  // numbers them in messages
  std::unique_ptr<transport::SharedSegments> shm_;
  // Shared-memory and per-peer paths: the host of each rank (HostMap's
  // numbering, the same on every rank), and whether any rank is on
  // another host than some other (then all-to-all-v carries their rows).
  std::vector<int> host_of_;
  bool several_hosts_ = false;
  int num_hosts_ = 1;
  std::vector<int> local_index_;               // [W] rank's index among its host's ranks
  std::vector<std::vector<int>> host_ranks_;   // [hosts] ranks of each host, ascending
  std::vector<std::string> host_names_;        // [hosts] what gethostname() said there
  int64_t combine_internode_bytes_ = 0;
  std::vector<float> forward_sums_;            // hierarchical: a host sum per forwarded row
  std::vector<float> send_, recv_, back_, partial_;
  std::vector<uint8_t> fp8_values_;   // fp8: x's rows quantised, [T, H]
  std::vector<float> fp8_scales_;     // and their scales, [T, ceil(H / 128)]
  Tensor x_wire_;                     // and read back, [T, H]
  std::vector<std::byte> wire_recv_;  // fp8: network records as they land
  std::vector<int64_t> send_offsets_, recv_offsets_;  // bytes, per rank
  std::vector<const float*> sources_;  // [T, W] partial-sum row of each (token, rank), or null
};

}  // namespace moex::ep
