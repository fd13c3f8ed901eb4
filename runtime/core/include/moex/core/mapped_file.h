// A read-only, shared mapping of a byte range of a file: the weights of a
// checkpoint (or of the host's weight cache) used in place, so that every
// process on a host that maps the same file shares one copy in the page
// cache, however many ranks and relaunches read it.
//
// A file that is cut short while mapped raises SIGBUS on access: checkpoints
// and cache entries are replaced by rename, never rewritten in place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moex {

class MappedRange {
 public:
  // Maps [begin, begin + bytes) of `path` (bytes > 0); the error names the
  // file and the range.
  static absl::StatusOr<std::shared_ptr<const MappedRange>> Map(const std::string& path, int64_t begin, int64_t bytes);
  ~MappedRange();
  MappedRange(const MappedRange&) = delete;
  MappedRange& operator=(const MappedRange&) = delete;

  const std::byte* data() const { return data_; }
  int64_t size() const { return bytes_; }

 private:
  MappedRange() = default;
  void* base_ = nullptr;  // page-aligned start of the mapping
  size_t mapped_ = 0;
  const std::byte* data_ = nullptr;
  int64_t bytes_ = 0;
};

}  // namespace moex
