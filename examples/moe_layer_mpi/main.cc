// One MoE layer, expert-parallel across the ranks of an mpirun job, built
// against an installed moex (find_package(moex), moex::ep):
//
//   mpirun -np 2 ./moe_layer_mpi [model] [tokens per rank]
//
// Every rank makes the layer of `model` (a preset such as tiny-dsv3, the
// default, or a config.json) with random weights from one seed and holds
// only its share of the experts; each routes its own tokens, dispatches them
// over the MPI transport to the ranks that hold their experts, runs those,
// and combines the results back. Each rank then computes the whole layer on
// its own (every expert, no dispatch) and compares; rank 0 prints the
// largest error over all ranks and PASS or FAIL, as `moex run --check` does.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/status_macros.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"
#include "moex/model/moe_layer_spec.h"
#include "moex/placement/placement.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport.h"

namespace {

constexpr uint64_t kSeed = 1;          // weights: every rank makes the same values
constexpr double kBound = 1e-4;        // relative to the output's scale, as `moex run --check`

absl::Status Run(const std::string& model, int64_t tokens_per_rank) {
  // The layer's shapes, router and activation: the model's first MoE layer.
  MOEX_ASSIGN_OR_RETURN(const moex::model::ModelArch arch, moex::model::LoadModel(model));
  MOEX_ASSIGN_OR_RETURN(const moex::model::MoeLayerSpec spec,
                        moex::model::MoeLayerSpec::FromArch(arch, std::nullopt));

  // The transport: MPI point to point between the ranks of this job.
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<moex::transport::Transport> transport,
                        moex::transport::CreateMpiTransport());
  const int rank = transport->rank(), world = transport->world_size();
  const moex::Deadline deadline = moex::Deadline::InSeconds(60);

  // Experts 0..E-1 split over the ranks in order; this rank loads its own.
  MOEX_ASSIGN_OR_RETURN(const moex::placement::Placement placement,
                        moex::placement::Placement::Contiguous(spec.num_experts, world));
  std::vector<int64_t> mine;
  for (int64_t s = 0; s < placement.num_local_slots(rank); ++s) {
    mine.push_back(placement.slot_expert(placement.first_slot(rank) + s));
  }
  MOEX_ASSIGN_OR_RETURN(moex::ep::MoeWeights weights, moex::ep::LoadMoeWeights(spec, nullptr, kSeed, mine));
  // Collective: the ranks agree on how tokens move (shared memory on one host).
  MOEX_ASSIGN_OR_RETURN(moex::ep::MoeLayer layer,
                        moex::ep::MoeLayer::Create(spec, placement, std::move(weights), *transport, deadline));

  // The job's tokens, the same on every rank; this rank feeds its slice.
  const int64_t total = tokens_per_rank * world, hidden = spec.hidden;
  moex::Tensor all_x({total, hidden});
  for (int64_t i = 0; i < all_x.size(); ++i) all_x.values[i] = moex::ep::SeededUniform(kSeed, "tokens", i);
  const auto [first, count] = moex::ep::TokenSlice(total, world, rank);
  moex::Tensor x({count, hidden});
  std::copy_n(all_x.values.begin() + first * hidden, count * hidden, x.values.begin());

  // Route, dispatch, experts, combine.
  moex::Tensor y;
  moex::ep::StepStats stats;
  MOEX_RETURN_IF_ERROR(layer.Forward(*transport, x, {}, first, deadline, &y, &stats));

  // The same layer on this one process: every expert, no dispatch.
  std::vector<int64_t> every_expert(spec.num_experts);
  for (int64_t e = 0; e < spec.num_experts; ++e) every_expert[e] = e;
  MOEX_ASSIGN_OR_RETURN(const moex::ep::MoeWeights all_weights,
                        moex::ep::LoadMoeWeights(spec, nullptr, kSeed, every_expert));
  std::vector<int64_t> slices;
  for (int r = 0; r < world; ++r) slices.push_back(moex::ep::TokenSlice(total, world, r).second);
  MOEX_ASSIGN_OR_RETURN(const moex::Tensor expected,
                        moex::ep::ReferenceForward(spec, all_weights, all_x, {}, slices));

  // This rank's largest error and the output's scale, then every rank's.
  double mine_figures[3] = {0, 0, static_cast<double>(stats.dispatch_bytes)};
  for (int64_t i = 0; i < count * hidden; ++i) {
    const double want = expected.values[first * hidden + i];
    mine_figures[0] = std::max(mine_figures[0], std::fabs(want - y.values[i]));
    mine_figures[1] = std::max(mine_figures[1], std::fabs(want));
  }
  std::vector<double> all_figures(3 * world);
  MOEX_RETURN_IF_ERROR(transport->AllGather(mine_figures, all_figures, deadline));
  double worst = 0, scale = 0, sent = 0;
  for (int r = 0; r < world; ++r) {
    worst = std::max(worst, all_figures[3 * r]);
    scale = std::max(scale, all_figures[3 * r + 1]);
    sent += all_figures[3 * r + 2];
  }
  const double error = scale > 0 ? worst / scale : worst;
  const bool pass = error <= kBound;
  if (rank == 0) {
    std::printf("moe_layer_mpi: %s layer %lld on %d ranks over %s (%s): %lld experts (top-%lld), hidden %lld, "
                "%lld tokens; dispatch sent %.0f bytes\n",
                model.c_str(), static_cast<long long>(spec.layer), world, std::string(transport->name()).c_str(),
                layer.DataPath().c_str(), static_cast<long long>(spec.num_experts),
                static_cast<long long>(spec.top_k), static_cast<long long>(hidden), static_cast<long long>(total),
                sent);
    std::printf("check: max |error| against a single-process computation, relative to the output's scale: "
                "%.3g (bound %.0e): %s\n",
                error, kBound, pass ? "PASS" : "FAIL");
  }
  return pass ? absl::OkStatus() : absl::InternalError("the layer's output differs from the single-process one");
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<std::unique_ptr<moex::transport::MpiSession>> session =
      moex::transport::MpiSession::Start(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "moe_layer_mpi: %s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  const std::string model = argc > 1 ? argv[1] : "tiny-dsv3";
  const int64_t tokens_per_rank = argc > 2 ? std::atoll(argv[2]) : 32;
  if (tokens_per_rank < 0) {
    std::fprintf(stderr, "moe_layer_mpi: tokens per rank must be >= 0\n");
    return 2;
  }
  const absl::Status status = Run(model, tokens_per_rank);
  if (!status.ok()) {
    std::fprintf(stderr, "moe_layer_mpi: rank %d: %s\n", (*session)->rank(), status.ToString().c_str());
    std::fflush(stderr);
    (*session)->Abort(1);
  }
  return 0;
}
