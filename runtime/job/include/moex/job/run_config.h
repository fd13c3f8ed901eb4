// What one run of an MoE layer does, whoever starts it: `moex run` fills it
// from flags, `moex worker` from the controller's JobSpec (through
// cluster's job_spec.h), and the controller validates a submitted JobSpec
// through it. Defaults are the member initialisers; bounds and pairings are
// in Validate(), once.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "moex/model/moe_layer_spec.h"

namespace moex::job {

// How errors name a field: as `moex run`'s flag (--steps) or as the
// JobSpec's field (spec.steps).
enum class FieldNames { kFlags, kJobSpec };

struct RebalanceConfig {
  std::string policy = "refined";    // refined or eplb (placement/policy.h; "moex": refined)
  double threshold = 0;              // window max/mean rank load that triggers; 0: only on request
  int64_t interval = 10;             // at least this many steps between placement changes
  int64_t window = 4;                // steps of load a decision looks at
  int64_t at_step = -1;              // also rebalance before this step (0-based); -1: never
  double migration_chunk_mb = 64;    // expert weights moved per step, all ranks together

  // Asked for by the user (a threshold or a step).
  bool requested() const { return threshold > 0 || at_step >= 0; }
  int64_t chunk_bytes() const;
};

struct RunConfig {
  std::string model = "mini-dsv3";   // preset, config.json, or a folder holding one
  std::optional<int64_t> layer;      // default: the first MoE layer
  std::string weights;               // safetensors file, index, or folder; "": random from `seed`
  std::string save_weights;          // rank 0 writes the whole layer's weights here
  std::string weight_cache;          // host directory keeping loaded weights for a relaunch
  std::string weight_dtype = "f32";  // random experts are made and held in this (a checkpoint's keep theirs)
  bool map_weights = true;           // a checkpoint's experts mapped read-only (false: copied in)
  std::string input;                 // safetensors with `hidden_states` [tokens, hidden]
  std::string output;                // rank 0 writes `output` [tokens, hidden] here
  int64_t tokens_per_rank = 512;     // synthetic tokens per rank per step
  int64_t steps = 5;
  std::string transport = "mpi";     // mpi, ucx, nccl (with device cuda)
  std::string device = "cpu";        // cpu, cuda
  std::string dispatch = "auto";     // auto, flat, hierarchical (ranks on several hosts)
  std::string dispatch_dtype = "fp32";  // fp32, fp8: rows between hosts (ep::DispatchDtype)
  double routing_skew = 0;           // Zipf exponent of synthetic routing
  uint64_t seed = 1;
  int64_t redundant_experts = 0;
  bool check = false;                // last step against the single-process computation
  bool check_every_step = false;
  RebalanceConfig rebalance;
  double timeout_seconds = 60;       // any one exchange's deadline
  std::string json;                  // rank 0 writes figures here
  bool quiet = false;
  int64_t first_step = 0;            // a relaunched job resumes after the steps done before

  // Bounds and pairings of the fields; reads no file.
  absl::Status Validate(FieldNames names = FieldNames::kFlags) const;
  // Validate(), then the model (read), the layer to run, the expert slots
  // against `world_size`, and, when `weights` is set, that its router tensor
  // is this layer's. Returns the layer.
  absl::StatusOr<model::MoeLayerSpec> ValidateLayer(int world_size, FieldNames names = FieldNames::kFlags) const;
};

// The tolerance of --check: bf16 on the GPU path, fp32 summation order on
// the CPU.
double CheckBound(const RunConfig& config);

}  // namespace moex::job
