// A host's cache of weight tensors in files (by default in /dev/shm, so in
// memory), shared by the ranks on that host and outliving them: a rank
// relaunched after a failure reads back the tensors that are still there and
// loads from the checkpoint (or makes from the seed) only what is missing.
// A rank that died leaves its tensors to its successors; a host that died
// takes its cache with it, and the ranks that replace it load again.
//
// One file per tensor, named after it. Each entry records its source (the
// checkpoint file, byte range, size and modification time, or the seed), its
// shape, its dtype and an XXH3-64 hash of its bytes; an entry that does not match what is
// asked for, is cut short or fails its checksum is a miss, never a wrong
// tensor. Entries are written to a temporary file and renamed into place, so
// a rank killed mid-write leaves no half entry.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moex/core/stored_matrix.h"
#include "moex/core/tensor.h"

namespace moex::ep {

class WeightCache {
 public:
  // Creates `dir` (mode 0700) when missing. Refuses a path that is not a
  // directory, is a symbolic link, or belongs to another user.
  static absl::StatusOr<WeightCache> Open(const std::string& dir);

  // The tensor `name` when its entry was made from `source` with `shape`
  // and is intact; nullopt otherwise. An entry that exists but cannot be
  // used sets `*rejected` to why (nothing is set for a plain miss).
  std::optional<Tensor> Get(const std::string& name, const std::string& source, const std::vector<int64_t>& shape,
                            std::string* rejected) const;
  // True when an entry for `name` from `source` with `shape` and of the
  // right size is there (its checksum is not read: Get checks it).
  bool Holds(const std::string& name, const std::string& source, const std::vector<int64_t>& shape) const;
  // Stores `tensor` as the entry for `name`, replacing any older one. An
  // error (no space left, ...) names the file; nothing partial is left.
  absl::Status Put(const std::string& name, const std::string& source, const Tensor& tensor) const;

  // The same for a weight matrix in its stored dtype: the entry holds the
  // stored bytes (values and scales), and GetMatrix maps them read-only, so
  // every rank of the host shares the one copy in /dev/shm.
  std::optional<StoredMatrix> GetMatrix(const std::string& name, const std::string& source, WeightFormat format,
                                        int64_t rows, int64_t cols, std::string* rejected) const;
  bool HoldsMatrix(const std::string& name, const std::string& source, WeightFormat format, int64_t rows,
                   int64_t cols) const;
  absl::Status PutMatrix(const std::string& name, const std::string& source, const StoredMatrix& matrix) const;

  const std::string& dir() const { return dir_; }
  // The entry's file for `name` (the name with anything but [A-Za-z0-9._-]
  // replaced, then ".moexw").
  std::string PathFor(const std::string& name) const;

 private:
  explicit WeightCache(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace moex::ep
