// Expert load statistics and placements in the forms SGLang and vLLM use, so
// moex's placement policy can plan for people who serve on those engines
// (docs/engines.md says which of their files was read, at which commit).
//
// Load statistics, one logical load per (layer, logical expert):
//   moex    {"load": [[tokens per logical expert...], ...one row per layer]}
//   sglang  {"logical_count": [layers][logical]} or [steps][layers][logical]
//           (summed over the steps, as SGLang's init_by_eplb does): what
//           SGLang's expert-distribution recorder (mode "stat") dumps, and
//           what --init-expert-location reads, once converted from .pt to JSON
//   vllm    {"global_expert_load": [moe layers][logical]} (the load
//           EplbState.rearrange plans from), or its physical form
//           {"expert_load_window": [window][moe layers][physical] (or
//           "expert_load_pass": [moe layers][physical]),
//            "physical_to_logical_map": [moe layers][physical]}
//           with the physical slots of all ranks in rank order.
// Placements (slot -> logical expert, slots GPU by GPU, as EPLB's phy2log):
//   moex    {"layers": [{"phy2log": [...]}, ...]} (placement_file.h)
//   sglang  {"physical_to_logical_map": [layers][physical]}: exactly the one
//           key SGLang's --init-expert-location passes to init_by_mapping
//   vllm    EplbState's tensors: {"physical_to_logical_map": [moe layers]
//           [physical], "logical_to_physical_map": [moe layers][logical]
//           [redundant + 1] (-1 padded), "logical_replica_count": [moe
//           layers][logical]}. vLLM reads no placement file (see the docs).
//
// All of it is untrusted input: every error names the source and the field
// (layer, expert, slot), shapes are checked, nothing throws.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "moex/placement/eplb.h"
#include "nlohmann/json.hpp"

namespace moex::placement {

enum class EngineFormat { kMoex, kSglang, kVllm };

inline constexpr std::string_view kEngineFormatNames = "moex, sglang, vllm";
// "moex", "sglang" or "vllm"; the error lists the names.
absl::StatusOr<EngineFormat> ParseEngineFormat(std::string_view name);
std::string_view EngineFormatName(EngineFormat format);

// Limits on what is read: a placement or load larger than this is refused
// before it is built (the largest models have ~100 layers, 384 experts).
inline constexpr int64_t kMaxLayers = 4096;
inline constexpr int64_t kMaxExperts = 65536;

// A torch file (.pt/.pth name, or a zip or pickle's first bytes): moex reads
// no pickles; the error gives the one line of Python that converts it.
bool LooksLikeTorchFile(std::string_view path, std::string_view first_bytes);
absl::Status TorchFileError(std::string_view path);

// Load statistics [layers][logical experts] in `format`.
absl::StatusOr<Matrix> ParseEngineLoad(const nlohmann::json& j, EngineFormat format, std::string_view source);

// A placement [layers][physical slots] in `format`: rectangular, every entry
// an integer in [0, kMaxExperts).
absl::StatusOr<IndexMatrix> ParseEnginePlacement(const nlohmann::json& j, EngineFormat format,
                                                 std::string_view source);

struct ExportOptions {
  // Rows of the exported map; 0: the placement's own rows. SGLang wants one
  // row per decoder layer (config num_hidden_layers, dense layers included),
  // vLLM one per MoE layer.
  int64_t total_layers = 0;
  // The exported row of the placement's layer 0 (rows before it and after
  // its last layer get the trivial map: slot s holds expert s % experts).
  int64_t first_layer = 0;
};

// The placement in `format` (moex: the plan file --current reads).
absl::StatusOr<nlohmann::json> ExportPlacement(const IndexMatrix& phy2log, int64_t num_logical,
                                               EngineFormat format, const ExportOptions& options = {});

}  // namespace moex::placement
