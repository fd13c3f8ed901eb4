#include "moex/model/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "nlohmann/json.hpp"

namespace moex::model {
namespace {

std::string TemporaryName(const std::string& path) { return StrCat(path, ".tmp.", getpid()); }

}  // namespace

int64_t SafetensorsDtypeBytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "U8" || dtype == "I8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2" ||
      dtype == "F8_E8M0") {
    return 1;
  }
  return 0;
}

int64_t TensorDecl::bytes() const {
  const int64_t width = SafetensorsDtypeBytes(dtype);
  if (width == 0) return -1;
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    elements *= d;
  }
  return elements * width;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorDecl> tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  int64_t offset = 0;
  for (const TensorDecl& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !seen.insert(t.name).second) {
      return absl::InvalidArgumentError(StrCat("'", path, "': tensor name '", t.name, "' is empty, reserved or repeated"));
    }
    const int64_t bytes = t.bytes();
    if (bytes < 0) {
      return absl::InvalidArgumentError(StrCat("'", path, "': tensor '", t.name, "': dtype '", t.dtype, "' and shape ",
                                               ShapeString(t.shape), " cannot be written"));
    }
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned

  std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
  writer->path_ = path;
  writer->temporary_ = TemporaryName(path);
  writer->tensors_ = std::move(tensors);
  writer->fd_ = open(writer->temporary_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (writer->fd_ < 0) {
    return absl::PermissionDeniedError(StrCat("cannot write '", writer->temporary_, "': ", std::strerror(errno)));
  }
  const uint64_t length = text.size();  // little-endian on every host moex builds for
  unsigned char le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(length >> (8 * i));
  absl::Status written = writer->WriteAll(le, 8);
  if (written.ok()) written = writer->WriteAll(text.data(), static_cast<int64_t>(text.size()));
  if (!written.ok()) return written;  // the destructor removes the temporary file
  writer->header_bytes_ = 8 + static_cast<int64_t>(text.size());
  writer->data_bytes_ = 0;
  // Skip tensors of no bytes, so that the next Append names a real one.
  while (writer->current_ < writer->tensors_.size() && writer->tensors_[writer->current_].bytes() == 0) {
    ++writer->current_;
  }
  return writer;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) close(fd_);
  if (!finished_ && !temporary_.empty()) std::remove(temporary_.c_str());
}

absl::Status SafetensorsWriter::WriteAll(const void* data, int64_t bytes) {
  const char* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t put = write(fd_, at, static_cast<size_t>(bytes));
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) {
      return absl::DataLossError(StrCat("error while writing '", temporary_, "': ",
                                        put < 0 ? std::strerror(errno) : "nothing written"));
    }
    at += put;
    bytes -= put;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(const std::string& name, const void* data, int64_t bytes) {
  if (finished_ || fd_ < 0) return absl::FailedPreconditionError(StrCat("'", path_, "' is already finished"));
  if (current_ >= tensors_.size()) {
    return absl::FailedPreconditionError(
        StrCat("'", path_, "': tensor '", name, "' is written after all ", tensors_.size(), " declared tensors"));
  }
  const TensorDecl& tensor = tensors_[current_];
  if (name != tensor.name) {
    return absl::FailedPreconditionError(StrCat("'", path_, "': tensor '", name, "' is written where '", tensor.name,
                                                "' (declared #", current_, ") is due"));
  }
  if (bytes < 0 || current_done_ + bytes > tensor.bytes()) {
    return absl::InvalidArgumentError(StrCat("'", path_, "': tensor '", name, "' is declared ", tensor.dtype, " ",
                                             ShapeString(tensor.shape), ", ", tensor.bytes(), " bytes; ",
                                             current_done_ + bytes, " were given"));
  }
  absl::Status written = WriteAll(data, bytes);
  if (!written.ok()) return written;
  current_done_ += bytes;
  data_bytes_ += bytes;
  if (current_done_ == tensor.bytes()) {
    current_done_ = 0;
    ++current_;
    while (current_ < tensors_.size() && tensors_[current_].bytes() == 0) ++current_;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (finished_ || fd_ < 0) return absl::FailedPreconditionError(StrCat("'", path_, "' is already finished"));
  if (current_ < tensors_.size()) {
    const TensorDecl& missing = tensors_[current_];
    return absl::FailedPreconditionError(StrCat("'", path_, "': tensor '", missing.name, "' (declared #", current_,
                                                " of ", tensors_.size(), ") has ", current_done_, " of its ",
                                                missing.bytes(), " bytes written"));
  }
  if (fsync(fd_) != 0) {
    return absl::DataLossError(StrCat("cannot flush '", temporary_, "' to disk: ", std::strerror(errno)));
  }
  const int closed = close(fd_);
  fd_ = -1;
  if (closed != 0) return absl::DataLossError(StrCat("error closing '", temporary_, "': ", std::strerror(errno)));
  if (std::rename(temporary_.c_str(), path_.c_str()) != 0) {
    return absl::PermissionDeniedError(
        StrCat("cannot move '", temporary_, "' to '", path_, "': ", std::strerror(errno)));
  }
  finished_ = true;
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string temporary = TemporaryName(path);
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(StrCat("cannot write '", temporary, "': ", std::strerror(errno)));
  size_t done = 0;
  int error = 0;
  while (done < text.size() && error == 0) {
    const ssize_t put = write(fd, text.data() + done, text.size() - done);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) {
      error = put < 0 ? errno : EIO;
    } else {
      done += static_cast<size_t>(put);
    }
  }
  if (error == 0 && fsync(fd) != 0) error = errno;
  if (close(fd) != 0 && error == 0) error = errno;
  if (error == 0 && std::rename(temporary.c_str(), path.c_str()) != 0) error = errno;
  if (error != 0) {
    std::remove(temporary.c_str());
    return absl::DataLossError(StrCat("cannot write '", path, "': ", std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace moex::model
