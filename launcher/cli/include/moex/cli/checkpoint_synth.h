// `moex checkpoint synth`: a sharded safetensors checkpoint of a model's MoE
// layers, with the family's tensor names and the dtypes real checkpoints
// ship (FP8 with 128x128 block scales, MXFP4 blocks and scales, BF16), whose
// values are the random weights `moex run --seed S` makes (ep::SeededUniform
// times 1/sqrt(fan-in)), stored in that format. No real checkpoint can be
// downloaded where moex is tested; this is how tests and demonstrations get
// their weights.
//
// It streams: one weight is generated, quantised and appended to its shard
// at a time, so memory stays at one matrix however big the checkpoint.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/core/stored_matrix.h"
#include "moex/model/architecture.h"

namespace moex::cli {

struct SynthOptions {
  std::string model;   // preset name, config.json, or a folder holding one
  std::string layers;  // "3", "3-5", "3,7"; "": the first MoE layer
  std::string dtype = "fp8";  // fp8, mxfp4, bf16 or f32
  std::string out;
  uint64_t seed = 1;
  double shard_gib = 5.0;  // most bytes of tensors in one shard
  bool force = false;      // write into a non-empty --out
  int threads = 0;         // 0: one per core
  double progress_seconds = 5.0;  // between progress lines on the progress stream
};

struct SynthShard {
  std::string file;  // name inside --out
  int64_t bytes = 0;  // the file's size
  int64_t tensors = 0;
};

struct SynthResult {
  std::string out;
  std::string dtype;
  std::vector<int64_t> layers;
  std::vector<SynthShard> shards;
  int64_t tensors = 0;
  int64_t tensor_bytes = 0;  // the index's total_size
  int64_t file_bytes = 0;    // of the shards
  double seconds = 0;
};

// The MoE layers `text` names in `arch`: a comma-separated list of indices
// and ranges ("3", "3-5", "3,7"), or the first MoE layer when empty. A dense
// layer, one outside the model, or one listed twice is an error.
absl::StatusOr<std::vector<int64_t>> ParseSynthLayers(std::string_view text, const model::ModelArch& arch);

// How a weight of `format` is stored: the checkpoint tensors it becomes, by
// the naming of real checkpoints. `name` is the weight's ".weight" name.
//  - F32 / BF16: `name` itself;
//  - FP8: `name` as F8_E4M3 [rows, cols] and `name`_scale_inv F32
//    [ceil(rows/128), ceil(cols/128)] (DeepSeek-V3, Kimi K2);
//  - MXFP4: <name less ".weight">_blocks U8 [rows, cols/32, 16] and
//    _scales U8 [rows, cols/32] (gpt-oss's convention).
struct StoredName {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};
std::vector<StoredName> StoredNamesFor(const std::string& name, WeightFormat format, int64_t rows, int64_t cols);

// Writes the checkpoint into options.out: the shards
// (model-00001-of-0000N.safetensors), model.safetensors.index.json and the
// model's config.json (its quantization_config set to match). Progress lines
// go to `progress` (may be null).
absl::StatusOr<SynthResult> SynthesizeCheckpoint(const SynthOptions& options, std::ostream* progress);

}  // namespace moex::cli
