// One MoE layer's weights, by their Hugging Face names, read from a
// checkpoint (only the experts a rank holds) or made from a seed.
//
// Random weights are a pure function of (seed, tensor name, element), so
// every rank makes the same values for an expert wherever it is placed, and
// a single-process reference can rebuild the whole layer.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/tensor.h"
#include "moex/model/architecture.h"
#include "moex/model/safetensors.h"

namespace moex::ep {

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
  model::RouterSpec router;

  // The layer `layer` of `arch`, or its first MoE layer. The error names what
  // moex cannot run (family, activation, router, a dense layer).
  static absl::StatusOr<MoeLayerSpec> FromArch(const model::ModelArch& arch,
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

struct ExpertWeights {
  Tensor gate;  // [F, H]
  Tensor up;    // [F, H]
  Tensor down;  // [H, F]
};

struct MoeWeights {
  Tensor router;                            // [E, H]
  Tensor correction_bias;                   // [E], or empty
  std::map<int64_t, ExpertWeights> experts; // only the ones asked for
  std::optional<ExpertWeights> shared;      // width shared_width
  Tensor shared_gate;                       // [1, H], or empty
};

// `checkpoint` null: random weights from `seed`.
absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts);

class WeightCache;
// What a load took from the host's weight cache and what it had to load.
struct WeightLoadReport {
  int64_t experts_from_cache = 0;  // every tensor of the expert came from the cache
  int64_t experts_loaded = 0;
  int64_t tensors_from_cache = 0, tensors_loaded = 0;
  int64_t bytes_from_cache = 0, bytes_loaded = 0;  // fp32 bytes
  std::vector<std::string> rejected;  // entries that were there but unusable, and why
  std::string put_error;  // the first entry that could not be written (no more are tried)
};

// As above, reading each tensor from `cache` when it holds it (made from the
// same checkpoint bytes or seed), and putting there what it had to load.
absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts, const WeightCache* cache,
                                          WeightLoadReport* report);

// Puts one expert's tensors in `cache` (unless it holds them already), keyed
// as LoadMoeWeights keys them: for experts that reached a rank otherwise
// than by loading (live migration).
absl::Status CacheExpert(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                         int64_t expert, const ExpertWeights& weights, const WeightCache& cache);

// Writes the whole layer (every expert) to a safetensors file, with the
// family's names: test fixtures and `moex run --save-weights`.
absl::Status SaveMoeWeights(const MoeLayerSpec& spec, const MoeWeights& weights,
                            const std::string& path, model::StorageDtype dtype);

// Uniform in [-1, 1), a pure function of (seed, name, index).
float SeededUniform(uint64_t seed, std::string_view name, int64_t index);

}  // namespace moex::ep
