// Writing a safetensors file a tensor at a time, never holding it whole:
// every tensor is declared first (name, dtype, shape), the header is written
// from the declarations, then each tensor's bytes are appended in declared
// order, in as many pieces as the caller likes. The file is written under a
// temporary name and renamed into place by Finish(); a writer destroyed
// before that removes it. WriteSafetensors (safetensors.h) writes small F32
// and BF16 files from whole tensors; this is for checkpoints of any size and
// any dtype (F8_E4M3 weights, U8 MXFP4 blocks and scales).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex::model {

// Bytes of one element of a safetensors dtype ("F32", "BF16", "F8_E4M3",
// "U8", ...); 0 for a dtype this writer does not know.
int64_t SafetensorsDtypeBytes(const std::string& dtype);

struct TensorDecl {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  // Elements times the dtype's width; -1 when the dtype is unknown.
  int64_t bytes() const;
};

class SafetensorsWriter {
 public:
  // Creates the temporary file beside `path` and writes the header of
  // `tensors` (with `metadata` as its "__metadata__", when not empty). An
  // unknown dtype, a negative dimension or a repeated name is an error
  // naming the tensor.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorDecl> tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Appends `bytes` bytes of tensor `name`, which must be the declared tensor
  // being written (the next one once the previous is complete); a piece that
  // would run past the tensor's declared size is an error.
  absl::Status Append(const std::string& name, const void* data, int64_t bytes);
  // Checks that every declared tensor was written in full, flushes the file
  // to disk and renames it to its path.
  absl::Status Finish();

  const std::string& path() const { return path_; }
  // Bytes of the file: the 8-byte length, the header and the tensors.
  int64_t file_bytes() const { return header_bytes_ + data_bytes_; }
  int64_t data_bytes() const { return data_bytes_; }

 private:
  SafetensorsWriter() = default;
  absl::Status WriteAll(const void* data, int64_t bytes);

  std::string path_, temporary_;
  int fd_ = -1;
  std::vector<TensorDecl> tensors_;
  size_t current_ = 0;        // the tensor being written
  int64_t current_done_ = 0;  // its bytes written so far
  int64_t header_bytes_ = 0;
  int64_t data_bytes_ = 0;
  bool finished_ = false;
};

// Writes `text` to `path` through a temporary file renamed into place (for
// a checkpoint's index and config.json).
absl::Status WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace moex::model
