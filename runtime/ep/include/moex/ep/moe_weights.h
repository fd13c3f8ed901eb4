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
#include "moex/core/stored_matrix.h"
#include "moex/core/tensor.h"
#include "moex/model/architecture.h"
#include "moex/model/moe_layer_spec.h"
#include "moex/model/safetensors.h"

namespace moex::ep {

// The layer's shapes and names live in the model layer (no MPI, no BLAS),
// so that the controller can check a job without this one.
using model::MoeLayerSpec;
using model::MoeWeightNames;
using model::WeightNamesFor;

// An expert's projections, each in the dtype it is stored in (F32 for
// random weights unless asked otherwise; a checkpoint's own dtype), in
// Hugging Face's [out, in] orientation whatever the checkpoint's layout, and
// its biases in fp32 when the family has them (gpt-oss).
struct ExpertWeights {
  StoredMatrix gate;  // [F, H]; empty when the MLP is not gated (relu^2)
  StoredMatrix up;    // [F, H]
  StoredMatrix down;  // [H, F]
  std::vector<float> gate_bias, up_bias, down_bias;  // [F], [F], [H]; or empty
  int64_t bytes() const;
  WeightFormat format() const { return up.format; }
  // Writes gate (when gated), up, down (values then scales each), then the
  // biases: bytes() in all.
  void CopyBytes(std::byte* out) const;
  // The inverse of CopyBytes for a routed expert of `spec` in `format`.
  static ExpertWeights FromBytes(const MoeLayerSpec& spec, WeightFormat format, const std::byte* bytes);
};

// Bytes of one routed expert's weights as they are held and migrated in
// `format` (values and scales of its projections, and its fp32 biases).
inline int64_t ExpertBytes(const MoeLayerSpec& spec, WeightFormat format = WeightFormat::kF32) {
  const int64_t F = spec.expert_width, H = spec.hidden;
  const int64_t in = StoredMatrix::ValueBytes(format, F, H) + StoredMatrix::ScaleBytes(format, F, H);
  const int64_t biases = spec.mlp.biases ? 4 * ((spec.mlp.gated() ? 2 : 1) * F + H) : 0;
  return (spec.mlp.gated() ? 2 : 1) * in + StoredMatrix::ValueBytes(format, H, F) +
         StoredMatrix::ScaleBytes(format, H, F) + biases;
}

struct MoeWeights {
  Tensor router;                            // [E, H]
  Tensor router_bias;                       // [E], or empty (gpt-oss has one)
  Tensor correction_bias;                   // [E], or empty
  std::map<int64_t, ExpertWeights> experts; // only the ones asked for
  std::optional<ExpertWeights> shared;      // width shared_width
  Tensor shared_gate;                       // [1, H], or empty
  std::vector<int32_t> token_table;         // [vocab, k], hash-routed layers (DeepSeek-V4's tid2eid)
  WeightFormat expert_format = WeightFormat::kF32;  // of the routed experts
  // Bytes of the routed experts held, values and scales.
  int64_t expert_bytes() const;
};

// How LoadMoeWeights reads: a checkpoint's matrices mapped read-only (shared
// with every process of the host through the page cache) or copied into this
// process; random experts made in `random_format`.
struct WeightLoadOptions {
  bool map_checkpoint = true;
  WeightFormat random_format = WeightFormat::kF32;
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
  int64_t bytes_from_cache = 0, bytes_loaded = 0;  // as held (stored dtype)
  std::vector<std::string> rejected;  // entries that were there but unusable, and why
  std::string put_error;  // the first entry that could not be written (no more are tried)
};

// As above, reading each tensor from `cache` when it holds it (made from the
// same checkpoint bytes or seed), and putting there what it had to load.
absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts, const WeightCache* cache,
                                          WeightLoadReport* report, const WeightLoadOptions& options = {});

// The dtype the routed experts of `spec` come in: the checkpoint's (its
// first expert's gate), else `options.random_format`. An error names a
// checkpoint tensor that moex cannot hold.
absl::StatusOr<WeightFormat> ExpertFormatOf(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint,
                                            const WeightLoadOptions& options = {});

// Whether a mapped checkpoint's experts are used in place (one copy a host,
// in the page cache): one tensor per expert projection. Stacked layouts
// (Llama 4, gpt-oss, DBRX) are cut or transposed at load into private
// copies, and are counted so by the memory check.
bool ExpertsUsedInPlace(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint);

// Puts one expert's tensors in `cache` (unless it holds them already), keyed
// as LoadMoeWeights keys them: for experts that reached a rank otherwise
// than by loading (live migration).
absl::Status CacheExpert(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                         int64_t expert, const ExpertWeights& weights, const WeightCache& cache);

// How many of `experts` the cache holds whole (gate, up and down, made from
// this source in `format`), from the entries' headers.
int64_t CountCachedExperts(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                           const std::vector<int64_t>& experts, WeightFormat format, const WeightCache& cache);

// Writes the whole layer (every expert) to a safetensors file, with the
// family's names: test fixtures and `moex run --save-weights`.
absl::Status SaveMoeWeights(const MoeLayerSpec& spec, const MoeWeights& weights,
                            const std::string& path, model::StorageDtype dtype);

// Uniform in [-1, 1), a pure function of (seed, name, index).
float SeededUniform(uint64_t seed, std::string_view name, int64_t index);
// out[i] = SeededUniform(seed, name, first + i) * scale for i < count, the
// name hashed once.
void SeededFill(uint64_t seed, std::string_view name, int64_t first, int64_t count, float scale, float* out);

}  // namespace moex::ep
