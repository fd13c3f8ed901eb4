// One MoE layer as the runtime runs it: its shapes, router and the names of
// its tensors in the family's checkpoints. Pure: derived from a ModelArch,
// used by the ranks (runtime/ep), by RunConfig's validation and by the
// controller, which links no MPI or BLAS.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"

namespace moex::model {

// What the runtime needs of one MoE layer, checked to be runnable.
struct MoeLayerSpec {
  std::string model_type;
  int64_t layer = 0;  // index in the model
  int64_t hidden = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_width = 0;
  int64_t shared_width = 0;  // 0: no shared expert
  bool shared_expert_gate = false;
  RouterSpec router;

  // The layer `layer` of `arch`, or its first MoE layer. The error names what
  // moex cannot run (family, activation, router, a dense layer).
  static absl::StatusOr<MoeLayerSpec> FromArch(const ModelArch& arch,
                                               std::optional<int64_t> layer);
  // Weights and biases of the layer: all experts, and what one token uses.
  int64_t total_params() const;
  int64_t active_params() const;
};

// Tensor names of the layer, following the family's checkpoint naming.
struct MoeWeightNames {
  std::string router;           // [E, H]
  std::string correction_bias;  // [E], sigmoid routers with noaux_tc
  std::string shared_gate;      // [1, H], Qwen2-MoE
  std::string Expert(int64_t expert, std::string_view projection) const;  // gate, up, down
  std::string Shared(std::string_view projection) const;
  std::string expert_prefix;
  std::string shared_prefix;
  bool mixtral_names = false;  // w1/w3/w2
};
MoeWeightNames WeightNamesFor(const MoeLayerSpec& spec);


}  // namespace moex::model
