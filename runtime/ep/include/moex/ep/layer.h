// One MoE layer running expert-parallel on this rank, whatever it runs on:
// MoeLayer (CPU, moe_layer.h) and the GPU plugin's layer (gpu_layer.h) are
// the two implementations. The run loop (runtime/run) and live rebalancing
// (runtime/balance) see only this interface.
#pragma once

#include <cstdint>
#include <span>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// What one rank saw in one forward pass.
struct StepStats {
  int64_t tokens = 0;           // local tokens in
  int64_t received_tokens = 0;  // tokens dispatched to this rank (its load)
  int64_t routed_pairs = 0;     // (token, expert) pairs this rank's experts served
  double route_seconds = 0;
  double dispatch_seconds = 0;
  double expert_seconds = 0;    // routed and shared experts
  double combine_seconds = 0;
  int64_t dispatch_bytes = 0;   // sent to other ranks
  int64_t combine_bytes = 0;
  // Distinct destination ranks over local tokens, other than this one: the
  // floor of what dispatch must move (times hidden x 4 bytes).
  int64_t remote_token_copies = 0;
  // Of dispatch_bytes, what crossed to other hosts, and its floor: distinct
  // (token, remote host) pairs x hidden x 4 bytes; of combine_bytes, what
  // crossed back. Zero on one host.
  int64_t internode_bytes = 0;
  int64_t internode_floor_bytes = 0;
  int64_t combine_internode_bytes = 0;
  std::vector<int64_t> tokens_per_local_slot;  // routed pairs per local slot
};

class Layer {
 public:
  virtual ~Layer() = default;

  // x [T, H] local tokens (host, fp32) whose first has global index
  // `first_token`; `token_ids` [T] their vocabulary ids, which hash-routed
  // layers route by (empty for the others); `y` is resized to [T, H] and
  // overwritten (reuse it across steps). `transport` is the rank's host
  // transport. Collective.
  virtual absl::Status Forward(transport::Transport& transport, const Tensor& x, std::span<const int64_t> token_ids,
                               int64_t first_token, Deadline deadline, Tensor* y, StepStats* stats) = 0;

  virtual const MoeLayerSpec& spec() const = 0;
  // The placement serving now (its version included).
  virtual const placement::Placement& placement() const = 0;
  virtual int rank() const = 0;
  // How tokens move: "shared memory", "per peer", "all-to-all-v", "NCCL 2.28.3 on
  // NVIDIA H200 (device 0)"; "" before the first Forward where it is chosen
  // lazily.
  virtual std::string DataPath() const = 0;
  // Why that path: "shared memory: 4 ranks on one host (vm), segments in
  // /dev/shm", or a fall-back and its cause; "" where there is no choice.
  virtual std::string DataPathReason() const { return ""; }
  // Distinct hosts among the ranks, as the data path found them; 0 where
  // the layer does not know.
  virtual int NumHosts() const { return 0; }
  // Where `ranks` are ("ranks 2, 3 on host node2 (every rank of it)"), for
  // a message naming lost ranks; "" where the layer does not know.
  virtual std::string WhereRanksAre(const std::vector<int>& /*ranks*/) const { return ""; }

  // The dtype this rank's routed experts are held in (and migrate in).
  virtual WeightFormat ExpertFormat() const { return WeightFormat::kF32; }
  // Weights out, for live migration: this rank's copy of `expert` on the
  // host, or null when it holds none there.
  virtual const ExpertWeights* HeldExpert(int64_t expert) const = 0;
  // Weights in: serves `next` from now on. This rank's experts in `next`
  // come from the weights it holds or from `incoming` (migrated); the ones
  // it no longer holds are dropped. Nothing changes on an error.
  virtual absl::Status SwitchPlacement(placement::Placement next, std::map<int64_t, ExpertWeights> incoming) = 0;

  // Routed pairs per logical expert that this rank served in the step
  // `stats` describes (sum it over ranks for the layer's load).
  std::vector<int64_t> TokensPerExpert(const StepStats& stats) const;
};

}  // namespace moex::ep
