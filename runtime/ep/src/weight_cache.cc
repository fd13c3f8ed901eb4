#include "moex/ep/weight_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "moex/core/mapped_file.h"
#include "moex/core/str_cat.h"

namespace moex::ep {
namespace {

// Layout of an entry, little-endian as the host (the cache never leaves it):
//   "MOEXWC03" | u64 key bytes | key (name '\n' source) | u64 rank |
//   rank x i64 dims | u64 format (WeightFormat) | u64 XXH3-64 of the bytes |
//   zeros to a 64-byte boundary | the stored bytes (values, then scales)
// (version 01 held a CRC-32, 02 fp32 only; their entries are refused as not
// ours, and replaced.)
constexpr char kMagic[8] = {'M', 'O', 'E', 'X', 'W', 'C', '0', '3'};
constexpr int64_t kPayloadAlign = 64;
constexpr uint64_t kMaxKeyBytes = 1 << 16;
constexpr uint64_t kMaxRank = 8;


std::string Key(const std::string& name, const std::string& source) { return StrCat(name, "\n", source); }

std::string Errno() { return std::strerror(errno); }

// Reads exactly `bytes` at the file's current offset; false on a short read.
bool ReadExactly(int fd, void* out, size_t bytes) {
  auto* p = static_cast<char*>(out);
  while (bytes > 0) {
    ssize_t n = read(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteExactly(int fd, const void* data, size_t bytes) {
  const auto* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return true;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) close(fd_);
      fd_ = other.release();
    }
    return *this;
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

}  // namespace

absl::StatusOr<WeightCache> WeightCache::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("the weight cache needs a directory");
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::UnavailableError(StrCat("cannot create the weight cache directory '", dir, "': ", Errno()));
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) {
    return absl::UnavailableError(StrCat("cannot read the weight cache directory '", dir, "': ", Errno()));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(StrCat("the weight cache '", dir, "' is not a directory (or is a symbolic link)"));
  }
  if (st.st_uid != geteuid()) {
    return absl::PermissionDeniedError(StrCat("the weight cache directory '", dir, "' belongs to uid ", st.st_uid,
                                              ", not to this user (uid ", geteuid(), ")"));
  }
  return WeightCache(dir);
}

std::string WeightCache::PathFor(const std::string& name) const {
  std::string file = name;
  for (char& c : file) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                       c == '_' || c == '-';
    if (!plain) c = '_';
  }
  if (file.empty() || file[0] == '.') file = StrCat("_", file);
  return StrCat(dir_, "/", file, ".moexw");
}

namespace {

// Opens the entry at `path` and checks its header against (key, shape,
// format) and its size (`payload` bytes after the header); on success
// *checksum holds the payload's checksum and *offset where it starts. An
// error says what is wrong; kNotFound: there is no entry.
absl::StatusOr<Fd> OpenEntry(const std::string& path, const std::string& key, const std::vector<int64_t>& shape,
                             WeightFormat format, int64_t payload, uint64_t* checksum, int64_t* offset) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return absl::UnavailableError(StrCat("cannot open '", path, "': ", Errno()));
  }
  auto reject = [&](std::string why) { return absl::DataLossError(StrCat("'", path, "': ", why)); };
  struct stat st {};
  if (fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return reject("not a regular file");
  char magic[sizeof(kMagic)];
  uint64_t key_bytes = 0;
  if (!ReadExactly(fd.get(), magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return reject("not a moex weight cache entry (or one of an older moex)");
  }
  if (!ReadExactly(fd.get(), &key_bytes, sizeof(key_bytes)) || key_bytes > kMaxKeyBytes) return reject("bad key length");
  std::string stored_key(key_bytes, '\0');
  if (!ReadExactly(fd.get(), stored_key.data(), stored_key.size())) return reject("cut short in its key");
  if (stored_key != key) return reject("made from another source (the weights changed)");
  uint64_t rank = 0;
  if (!ReadExactly(fd.get(), &rank, sizeof(rank)) || rank > kMaxRank) return reject("bad shape");
  std::vector<int64_t> dims(rank);
  if (!ReadExactly(fd.get(), dims.data(), rank * sizeof(int64_t))) return reject("cut short in its shape");
  if (dims != shape) return reject(StrCat("shape ", ShapeString(dims), ", not ", ShapeString(shape)));
  uint64_t stored_format = 0, stored_checksum = 0;
  if (!ReadExactly(fd.get(), &stored_format, sizeof(stored_format))) return reject("cut short in its dtype");
  if (stored_format != static_cast<uint64_t>(format)) {
    return reject(StrCat("held in dtype #", stored_format, ", not ", WeightFormatName(format)));
  }
  if (!ReadExactly(fd.get(), &stored_checksum, sizeof(stored_checksum))) return reject("cut short before its values");
  const int64_t header = static_cast<int64_t>(sizeof(kMagic) + sizeof(key_bytes) + key_bytes + sizeof(rank) +
                                              rank * sizeof(int64_t) + sizeof(stored_format) + sizeof(stored_checksum));
  const int64_t start = (header + kPayloadAlign - 1) / kPayloadAlign * kPayloadAlign;
  if (st.st_size != start + payload) return reject(StrCat(st.st_size, " bytes, not ", start + payload));
  *checksum = stored_checksum;
  *offset = start;
  return fd;
}

// Writes an entry for (key, shape, format) whose payload is `payload`.
absl::Status WriteEntry(const std::string& path, const std::string& key, const std::vector<int64_t>& shape,
                        WeightFormat format, const std::byte* payload, int64_t payload_bytes) {
  const std::string temporary = StrCat(path, ".tmp-", getpid());
  Fd fd(open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) return absl::UnavailableError(StrCat("cannot write the weight cache entry '", temporary, "': ", Errno()));
  const uint64_t key_bytes = key.size();
  const uint64_t rank = shape.size();
  const uint64_t format_code = static_cast<uint64_t>(format);
  const uint64_t checksum = XXH3_64bits(payload, static_cast<size_t>(payload_bytes));
  const int64_t header = static_cast<int64_t>(sizeof(kMagic) + sizeof(key_bytes) + key_bytes + sizeof(rank) +
                                              rank * sizeof(int64_t) + sizeof(format_code) + sizeof(checksum));
  const std::string padding(static_cast<size_t>((kPayloadAlign - header % kPayloadAlign) % kPayloadAlign), '\0');
  bool ok = WriteExactly(fd.get(), kMagic, sizeof(kMagic)) && WriteExactly(fd.get(), &key_bytes, sizeof(key_bytes)) &&
            WriteExactly(fd.get(), key.data(), key.size()) && WriteExactly(fd.get(), &rank, sizeof(rank)) &&
            WriteExactly(fd.get(), shape.data(), rank * sizeof(int64_t)) &&
            WriteExactly(fd.get(), &format_code, sizeof(format_code)) &&
            WriteExactly(fd.get(), &checksum, sizeof(checksum)) &&
            WriteExactly(fd.get(), padding.data(), padding.size()) &&
            WriteExactly(fd.get(), payload, static_cast<size_t>(payload_bytes));
  const std::string write_error = ok ? "" : Errno();
  ok = close(fd.release()) == 0 && ok;
  if (!ok || rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string why = write_error.empty() ? Errno() : write_error;
    unlink(temporary.c_str());
    return absl::UnavailableError(StrCat("cannot write the weight cache entry '", path, "': ", why));
  }
  return absl::OkStatus();
}

}  // namespace

bool WeightCache::Holds(const std::string& name, const std::string& source, const std::vector<int64_t>& shape) const {
  uint64_t checksum = 0;
  int64_t offset = 0;
  return OpenEntry(PathFor(name), Key(name, source), shape, WeightFormat::kF32, Tensor::NumElements(shape) * 4,
                   &checksum, &offset)
      .ok();
}

std::optional<Tensor> WeightCache::Get(const std::string& name, const std::string& source,
                                       const std::vector<int64_t>& shape, std::string* rejected) const {
  const std::string path = PathFor(name);
  uint64_t checksum = 0;
  int64_t offset = 0;
  Tensor tensor(shape);
  const int64_t bytes = tensor.size() * static_cast<int64_t>(sizeof(float));
  absl::StatusOr<Fd> fd = OpenEntry(path, Key(name, source), shape, WeightFormat::kF32, bytes, &checksum, &offset);
  if (!fd.ok()) {
    if (!absl::IsNotFound(fd.status()) && rejected != nullptr) *rejected = std::string(fd.status().message());
    return std::nullopt;
  }
  if (lseek(fd->get(), offset, SEEK_SET) != offset || !ReadExactly(fd->get(), tensor.data(), static_cast<size_t>(bytes))) {
    if (rejected != nullptr) *rejected = StrCat("'", path, "': cut short in its values");
    return std::nullopt;
  }
  if (XXH3_64bits(tensor.data(), static_cast<size_t>(bytes)) != checksum) {
    if (rejected != nullptr) *rejected = StrCat("'", path, "': checksum mismatch (corrupt)");
    return std::nullopt;
  }
  return tensor;
}

absl::Status WeightCache::Put(const std::string& name, const std::string& source, const Tensor& tensor) const {
  return WriteEntry(PathFor(name), Key(name, source), tensor.shape, WeightFormat::kF32,
                    reinterpret_cast<const std::byte*>(tensor.data()), tensor.size() * static_cast<int64_t>(sizeof(float)));
}

bool WeightCache::HoldsMatrix(const std::string& name, const std::string& source, WeightFormat format, int64_t rows,
                              int64_t cols) const {
  uint64_t checksum = 0;
  int64_t offset = 0;
  const int64_t bytes = StoredMatrix::ValueBytes(format, rows, cols) + StoredMatrix::ScaleBytes(format, rows, cols);
  return OpenEntry(PathFor(name), Key(name, source), {rows, cols}, format, bytes, &checksum, &offset).ok();
}

std::optional<StoredMatrix> WeightCache::GetMatrix(const std::string& name, const std::string& source,
                                                   WeightFormat format, int64_t rows, int64_t cols,
                                                   std::string* rejected) const {
  const std::string path = PathFor(name);
  uint64_t checksum = 0;
  int64_t offset = 0;
  const int64_t bytes = StoredMatrix::ValueBytes(format, rows, cols) + StoredMatrix::ScaleBytes(format, rows, cols);
  absl::StatusOr<Fd> fd = OpenEntry(path, Key(name, source), {rows, cols}, format, bytes, &checksum, &offset);
  if (!fd.ok()) {
    if (!absl::IsNotFound(fd.status()) && rejected != nullptr) *rejected = std::string(fd.status().message());
    return std::nullopt;
  }
  absl::StatusOr<std::shared_ptr<const MappedRange>> mapped = MappedRange::Map(path, offset, bytes);
  if (!mapped.ok()) {
    if (rejected != nullptr) *rejected = std::string(mapped.status().message());
    return std::nullopt;
  }
  if (XXH3_64bits((*mapped)->data(), static_cast<size_t>(bytes)) != checksum) {
    if (rejected != nullptr) *rejected = StrCat("'", path, "': checksum mismatch (corrupt)");
    return std::nullopt;
  }
  StoredMatrix m;
  m.format = format;
  m.rows = rows;
  m.cols = cols;
  m.values = (*mapped)->data();
  m.scales = m.scale_bytes() > 0 ? m.values + m.value_bytes() : nullptr;
  m.keep = std::move(*mapped);
  return m;
}

absl::Status WeightCache::PutMatrix(const std::string& name, const std::string& source, const StoredMatrix& matrix) const {
  std::vector<std::byte> bytes(static_cast<size_t>(matrix.bytes()));
  matrix.CopyBytes(bytes.data());
  return WriteEntry(PathFor(name), Key(name, source), {matrix.rows, matrix.cols}, matrix.format, bytes.data(),
                    matrix.bytes());
}

}  // namespace moex::ep
