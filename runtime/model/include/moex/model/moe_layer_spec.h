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
#include "moex/model/safetensors.h"

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
  ExpertMlpSpec mlp;         // routed experts
  ExpertMlpSpec shared_mlp;  // the shared expert
  // DeepSeek-V4's first num_hash_layers: each token's experts are row
  // input_ids[t] of a table [vocab_size, top_k] (tid2eid), not the top-k of
  // the scores; the weights are the scores there, as in scored layers.
  bool hash_routed = false;
  int64_t vocab_size = 0;  // rows of that table

  // The layer `layer` of `arch`, or its first MoE layer. The error names what
  // moex cannot run (family, activation, router, a dense layer).
  static absl::StatusOr<MoeLayerSpec> FromArch(const ModelArch& arch,
                                               std::optional<int64_t> layer);
  // Weights and biases of the layer: all experts, and what one token uses.
  int64_t total_params() const;
  int64_t active_params() const;
};

// How a family's checkpoints store the routed experts.
enum class ExpertLayout {
  kPerExpert,       // <experts>E.{gate,up,down}_proj.weight (Mixtral: w1, w3, w2)
  kFusedGateUp,     // Llama 4: <experts>gate_up_proj [E, H, 2F] (gate: the first F
                    // columns), <experts>down_proj [E, F, H]
  kFusedInterleaved,  // gpt-oss: <experts>gate_up_proj [E, H, 2F] (gate: even
                      // columns) or its MXFP4 _blocks/_scales [E, 2F, H/32, 16]
                      // (gate: even rows); down_proj [E, F, H] or _blocks
                      // [E, H, F/32, 16]; biases gate_up_proj_bias [E, 2F] and
                      // down_proj_bias [E, H]
  kDbrx,            // <experts>w1, v1 [E*F, H] (gate, up) and w2 [E*F, H] (down
                    // transposed)
  kStackedRows,     // Qwen3.5: <experts>gate_up_proj [E, 2F, H] (gate: the first
                    // F rows), <experts>down_proj [E, H, F]: [out, in] as stored
};

// The MoE layers of `arch`, as ranges: "1 to 47", "1, 3, 5 and 7".
std::string MoeLayerList(const ModelArch& arch);

// Tensor names of the layer, following the family's checkpoint naming.
struct MoeWeightNames {
  ExpertLayout layout = ExpertLayout::kPerExpert;
  std::string router;           // [E, H]
  std::string router_bias;      // [E], gpt-oss
  std::string correction_bias;  // [E], sigmoid routers with noaux_tc
  std::string shared_gate;      // [1, H], Qwen2-MoE, Qwen3-Next
  std::string token_table;      // [vocab, top_k] I64, hash-routed layers (DeepSeek-V4's tid2eid)
  std::string expert_prefix;
  std::string shared_prefix;
  bool mixtral_names = false;   // routed experts' w1/w3/w2 (Mixtral, DeepSeek-V4)
  bool shared_w_names = false;  // the shared expert's too (DeepSeek-V4)

  // kPerExpert: the checkpoint tensor of an expert's projection (gate, up,
  // down). Fused layouts: a name of its own for the projection's slice (the
  // weight cache's key and random weights' seed name), not in checkpoints.
  std::string Expert(int64_t expert, std::string_view projection) const;
  // Fused layouts: the stacked checkpoint tensor ("gate_up", "down"; DBRX
  // "w1", "v1", "w2"), and a bias ("gate_up", "down").
  std::string Stacked(std::string_view tensor) const;
  std::string StackedBias(std::string_view tensor) const;
  // The shared expert's projection (gate, up, down).
  std::string Shared(std::string_view projection) const;
  // The checkpoint tensor that tells the routed experts' dtype.
  std::string FormatTensor(bool gated) const;
};

// The names of `spec`'s tensors. With a checkpoint, the root its tensors
// use: Llama 4's multimodal checkpoints put the text model under
// "language_model.", Qwen3.5's under "model.language_model.".
MoeWeightNames WeightNamesFor(const MoeLayerSpec& spec, const Checkpoint* checkpoint = nullptr);


}  // namespace moex::model
