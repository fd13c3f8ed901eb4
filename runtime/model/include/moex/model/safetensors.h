// Reading and writing safetensors, the format Hugging Face checkpoints use:
// an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the bytes.
//
// A Checkpoint is one .safetensors file or a sharded checkpoint (its
// model.safetensors.index.json, or the folder holding it). Reading a tensor
// reads only its byte range, so a rank loads only the experts it holds.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/core/stored_matrix.h"
#include "moex/core/tensor.h"

namespace moex::model {

struct TensorInfo {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  int64_t begin = 0;  // absolute byte offsets in `file`
  int64_t end = 0;
  std::string file;
};

// Parses a safetensors header (the JSON after the 8-byte length) of a file
// whose tensor bytes are `data_bytes` long into `tensors`; `file` names it in
// errors and in each TensorInfo. Untrusted input: every error is a status.
absl::Status ParseSafetensorsHeader(std::string_view text, int64_t data_bytes, const std::string& file,
                                    std::map<std::string, TensorInfo>* tensors);

// One expert's matrix in a tensor that stacks every expert's: shaped
// [count, rows, cols] (Llama 4, gpt-oss) or [count * rows, cols] (DBRX).
struct StackedSlice {
  int64_t index = 0;
  int64_t count = 0;
};

class Checkpoint {
 public:
  // A .safetensors file, a model.safetensors.index.json, or a folder holding
  // either (index preferred).
  static absl::StatusOr<Checkpoint> Open(const std::string& path);

  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  absl::StatusOr<TensorInfo> Info(const std::string& name) const;
  // Reads a F32, BF16 or F16 tensor as fp32. With `expected_shape`, a
  // different shape is an error naming both.
  absl::StatusOr<Tensor> Read(const std::string& name,
                              const std::vector<int64_t>& expected_shape = {}) const;

  // Reads an I64 or I32 tensor (token ids, DeepSeek-V4's tid2eid) as int64.
  // With `expected_shape`, a different shape is an error naming both.
  absl::StatusOr<std::vector<int64_t>> ReadIntegers(const std::string& name,
                                                    const std::vector<int64_t>& expected_shape = {}) const;

  // The weight matrix `name` [rows, cols] kept in the dtype it is stored in:
  // F32, BF16, F16; F8_E4M3 with its block scales `<name>_scale_inv` (F32,
  // [ceil(rows/128), ceil(cols/128)], DeepSeek-V3 and Kimi K2) or
  // `<base>.scale` (F8_E8M0, same shape, DeepSeek-V4); MXFP4 as
  // `<base>_blocks` (U8 [rows, cols/32, 16]) and `<base>_scales` (U8 e8m0
  // [rows, cols/32]), base being `name` without ".weight" (gpt-oss's
  // convention); or FP4 packed in `name` (I8 [rows, cols/2], low nibble
  // first) with `<base>.scale` (F8_E8M0 [rows, cols/32]), DeepSeek-V4's
  // routed experts. Mapped read-only when `map` (the page cache holds the one
  // copy), else copied into this process. Scales must be finite and positive.
  // With `slice`, the tensors stack `slice->count` such matrices (scales
  // too) and only matrix `slice->index` is read.
  absl::StatusOr<StoredMatrix> ReadMatrix(const std::string& name, int64_t rows, int64_t cols, bool map = true,
                                          std::optional<StackedSlice> slice = std::nullopt) const;
  // The format ReadMatrix gives `name`, from the headers alone; the error
  // names the tensor, its file and dtype, and what moex accepts.
  absl::StatusOr<WeightFormat> MatrixFormat(const std::string& name) const;
  // The checkpoint tensors behind the matrix `name` (itself or its blocks,
  // and its scales), and their files' identity for caching.
  std::vector<std::string> MatrixTensors(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
};

enum class StorageDtype { kF32, kBF16 };

// An integer tensor to write, as I64 (token ids, a token table).
struct IntegerTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<int64_t> values;
};

// Writes `tensors` (in `dtype`) and `integers` (I64) to `path` atomically
// (a temporary file renamed into place).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                              StorageDtype dtype = StorageDtype::kF32, const std::vector<IntegerTensor>& integers = {});

}  // namespace moex::model
