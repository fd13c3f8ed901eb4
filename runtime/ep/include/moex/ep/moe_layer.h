// One MoE layer running expert-parallel across the ranks of a transport:
// route -> layout -> dispatch -> experts -> combine, plus the shared expert
// computed where the token lives.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/dispatch.h"
#include "moex/ep/layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// The layer on this rank's CPU: experts kept in their stored dtype, computed
// in fp32 on OpenBLAS a dequantised tile at a time.
class MoeLayer final : public Layer {
 public:
  // `weights` must hold every logical expert of this rank's slots; the
  // layer is for the dispatcher's rank and moves tokens along its path.
  static absl::StatusOr<MoeLayer> Create(MoeLayerSpec spec, Placement placement, MoeWeights weights,
                                         Dispatcher dispatcher);
  // The same with a dispatcher made here, on `transport`, from
  // DispatchOptions::FromEnvironment(dispatch), rows crossing between hosts
  // as `dtype`. Collective: every rank of `transport` calls it (after
  // checking its own arguments).
  static absl::StatusOr<MoeLayer> Create(MoeLayerSpec spec, Placement placement, MoeWeights weights,
                                         transport::Transport& transport, Deadline deadline,
                                         std::string_view dispatch = "auto",
                                         DispatchDtype dtype = DispatchDtype::kFp32);

  // x [T, H] local tokens whose first has global index `first_token`; `y`
  // is resized to [T, H] and overwritten (reuse it across steps).
  absl::Status Forward(transport::Transport& transport, const Tensor& x, std::span<const int64_t> token_ids,
                       int64_t first_token,
                       Deadline deadline, Tensor* y, StepStats* stats) override;

  // Serves `next` from now on. This rank's experts in `next` come from the
  // weights it holds or from `incoming` (migrated); the ones it no longer
  // holds are dropped. Nothing changes when an expert is missing.
  absl::Status SwitchPlacement(Placement next, std::map<int64_t, ExpertWeights> incoming) override;

  // How dispatch and combine move data: "shared memory" (every rank on one
  // host), "per peer" (shared memory within a host, all-to-all-v between
  // hosts) or "all-to-all-v", and why (Dispatcher::path_reason()).
  std::string DataPath() const override { return std::string(dispatcher_.path()); }
  std::string DataPathReason() const override { return dispatcher_.path_reason(); }
  int NumHosts() const override { return dispatcher_.num_hosts(); }
  std::string WhereRanksAre(const std::vector<int>& ranks) const override { return dispatcher_.DescribeRanks(ranks); }

  const MoeLayerSpec& spec() const override { return spec_; }
  const Placement& placement() const override { return placement_; }
  int rank() const override { return rank_; }
  const MoeWeights& weights() const { return weights_; }
  WeightFormat ExpertFormat() const override { return weights_.expert_format; }
  const ExpertWeights* HeldExpert(int64_t expert) const override {
    auto it = weights_.experts.find(expert);
    return it == weights_.experts.end() ? nullptr : &it->second;
  }

 private:
  MoeLayer(MoeLayerSpec spec, Placement placement, MoeWeights weights, Dispatcher dispatcher)
      : spec_(std::move(spec)),
        placement_(std::move(placement)),
        weights_(std::move(weights)),
        rank_(dispatcher.rank()),
        dispatcher_(std::move(dispatcher)) {}
  // What Create checks before any collective.
  static absl::Status Check(const MoeLayerSpec& spec, const Placement& placement, const MoeWeights& weights,
                            int rank, int world_size);

  // Routed experts of this rank over the received tokens: partial sums [R, H].
  void RunExperts(const DispatchResult& received, float* partial, StepStats* stats);
  void AddSharedExpert(const Tensor& x, Tensor* y);

  MoeLayerSpec spec_;
  Placement placement_;
  MoeWeights weights_;
  int rank_;
  Dispatcher dispatcher_;
  // Buffers reused across steps; they only grow.
  DispatchResult received_;
  std::vector<float> gathered_, expert_out_, workspace_;
  std::vector<int32_t> topk_idx_;
  std::vector<float> topk_weights_;
};

// Routes `x` [T, H] exactly as MoeLayer does: topk_idx and weights [T, k].
// Hash-routed layers take their experts from the token table at
// `token_ids` [T]; a missing or out-of-vocabulary id is an error naming the
// token.
absl::Status RouteTokens(const MoeLayerSpec& spec, const MoeWeights& weights, const Tensor& x,
                         std::span<const int64_t> token_ids, std::vector<int32_t>* topk_idx,
                         std::vector<float>* topk_weights);

// The layer on one process with no dispatch at all: for each token, the sum
// over its chosen experts of weight x FFN(x), in double precision, plus the
// shared expert. `weights` must hold every expert. Tokens are routed in
// slices of `slice_tokens` (the ranks' split) so that routing sees the very
// same GEMM shapes as the distributed run. With `dtype` kFp8 the routed
// experts see each row as its fp8 form reads back (DispatchDtype), the
// router and the shared expert the row itself.
absl::StatusOr<Tensor> ReferenceForward(const MoeLayerSpec& spec, const MoeWeights& weights, const Tensor& x,
                                        std::span<const int64_t> token_ids, const std::vector<int64_t>& slice_tokens,
                                        DispatchDtype dtype = DispatchDtype::kFp32);

// Tokens of rank `rank` when `total` are split over `world` ranks in order,
// as evenly as possible: {first token, count}.
std::pair<int64_t, int64_t> TokenSlice(int64_t total, int world, int rank);

}  // namespace moex::ep
