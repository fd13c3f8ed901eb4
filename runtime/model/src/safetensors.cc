#include "moex/model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/config_view.h"
#include "nlohmann/json.hpp"

namespace moex::model {
namespace {

constexpr int64_t kMaxHeaderBytes = int64_t{100} << 20;  // as the reference implementation

int64_t DtypeBytes(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
  return 0;
}

// pread the whole range or fail naming the file.
absl::Status ReadRange(const std::string& file, int64_t begin, int64_t bytes, void* out) {
  int fd = open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(StrCat("cannot open '", file, "': ", std::strerror(errno)));
  int64_t done = 0;
  while (done < bytes) {
    ssize_t got = pread(fd, static_cast<char*>(out) + done, static_cast<size_t>(bytes - done), begin + done);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      int error = errno;
      close(fd);
      return absl::DataLossError(StrCat("'", file, "': short read at byte ", begin + done,
                                        got < 0 ? StrCat(": ", std::strerror(error)) : " (truncated)"));
    }
    done += got;
  }
  close(fd);
  return absl::OkStatus();
}

// Parses one file's header into `tensors`.
absl::Status ParseHeader(const std::string& file, std::map<std::string, TensorInfo>* tensors) {
  std::error_code error;
  int64_t file_size = static_cast<int64_t>(std::filesystem::file_size(file, error));
  if (error) return absl::NotFoundError(StrCat("cannot open '", file, "': ", error.message()));
  if (file_size < 8) return absl::DataLossError(StrCat("'", file, "' is ", file_size, " bytes: not a safetensors file"));
  uint64_t header_bytes = 0;
  MOEX_RETURN_IF_ERROR(ReadRange(file, 0, 8, &header_bytes));
  if (header_bytes > static_cast<uint64_t>(kMaxHeaderBytes) ||
      static_cast<int64_t>(header_bytes) > file_size - 8) {
    return absl::DataLossError(StrCat("'", file, "': header length ", header_bytes,
                                      " does not fit the file (", file_size, " bytes)"));
  }
  std::string text(header_bytes, '\0');
  MOEX_RETURN_IF_ERROR(ReadRange(file, 8, static_cast<int64_t>(header_bytes), text.data()));
  return ParseSafetensorsHeader(text, file_size - 8 - static_cast<int64_t>(header_bytes), file, tensors);
}

}  // namespace

absl::Status ParseSafetensorsHeader(std::string_view text, int64_t data_bytes, const std::string& file,
                                    std::map<std::string, TensorInfo>* tensors) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json header, ParseJsonText(text, StrCat(file, " (header)")));
  if (!header.is_object()) return absl::DataLossError(StrCat("'", file, "': the header is not a JSON object"));
  const int64_t data_start = 8 + static_cast<int64_t>(text.size());
  // Found by tests/fuzz under UBSan: data_start + data_bytes must not overflow.
  if (data_bytes < 0 || data_bytes > std::numeric_limits<int64_t>::max() - data_start) {
    return absl::DataLossError(StrCat("'", file, "': ", data_bytes, " data bytes after a header of ", text.size(),
                                      " bytes is out of range"));
  }
  for (auto& item : header.items()) {
    const std::string name = item.key();
    nlohmann::json& entry = item.value();
    if (name == "__metadata__") continue;
    auto bad = [&](std::string_view why) {
      return absl::DataLossError(StrCat("'", file, "': tensor '", name, "': ", why));
    };
    if (!entry.is_object() || !entry["dtype"].is_string() || !entry["shape"].is_array() ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      return bad("needs dtype, shape and data_offsets [begin, end]");
    }
    TensorInfo info;
    info.name = name;
    info.file = file;
    info.dtype = entry["dtype"].get<std::string>();
    int64_t elements = 1;
    for (const nlohmann::json& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) return bad("bad dimension");
      info.shape.push_back(d.get<int64_t>());
      // Checked before multiplying: 2^42 x 2^40 would overflow.
      if (info.shape.back() > 0 && elements > (int64_t{1} << 42) / info.shape.back()) return bad("too many elements");
      elements *= info.shape.back();
    }
    const nlohmann::json& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) return bad("bad data_offsets");
    uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > static_cast<uint64_t>(data_bytes)) {
      return bad(StrCat("data_offsets [", begin, ", ", end, "] fall outside the file's ",
                        data_bytes, " data bytes (truncated file?)"));
    }
    int64_t width = DtypeBytes(info.dtype);
    if (width == 0) return bad(StrCat("unknown dtype '", info.dtype, "'"));
    if (static_cast<int64_t>(end - begin) != elements * width) {
      return bad(StrCat(ShapeString(info.shape), " ", info.dtype, " needs ", elements * width,
                        " bytes, data_offsets give ", end - begin));
    }
    info.begin = data_start + static_cast<int64_t>(begin);
    info.end = data_start + static_cast<int64_t>(end);
    (*tensors)[name] = std::move(info);
  }
  return absl::OkStatus();
}

absl::StatusOr<Checkpoint> Checkpoint::Open(const std::string& path) {
  namespace fs = std::filesystem;
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::error_code error;
  fs::path target(path);
  if (fs::is_directory(target, error)) {
    if (fs::exists(target / "model.safetensors.index.json", error)) {
      target /= "model.safetensors.index.json";
    } else if (fs::exists(target / "model.safetensors", error)) {
      target /= "model.safetensors";
    } else {
      return absl::NotFoundError(StrCat("'", path, "' holds neither model.safetensors.index.json "
                                        "nor model.safetensors"));
    }
  }
  if (!fs::exists(target, error)) return absl::NotFoundError(StrCat("cannot open '", path, "': no such file"));
  if (target.extension() == ".json") {
    MOEX_ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(target.string()));
    if (!index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(StrCat(target.string(), ": field 'weight_map' is missing"));
    }
    std::map<std::string, std::map<std::string, TensorInfo>> shards;
    for (auto& [name, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) {
        return absl::InvalidArgumentError(StrCat(target.string(), ": weight_map['", name, "'] must be a file name"));
      }
      std::string file = (target.parent_path() / shard.get<std::string>()).string();
      if (!shards.count(file)) MOEX_RETURN_IF_ERROR(ParseHeader(file, &shards[file]));
      auto it = shards[file].find(name);
      if (it == shards[file].end()) {
        return absl::DataLossError(StrCat(target.string(), " maps '", name, "' to '", file,
                                          "', which does not hold it"));
      }
      checkpoint.tensors_[name] = it->second;
    }
  } else {
    MOEX_RETURN_IF_ERROR(ParseHeader(target.string(), &checkpoint.tensors_));
  }
  return checkpoint;
}

absl::StatusOr<TensorInfo> Checkpoint::Info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(StrCat("checkpoint '", path_, "' has no tensor '", name, "'"));
  }
  return it->second;
}

absl::StatusOr<Tensor> Checkpoint::Read(const std::string& name,
                                        const std::vector<int64_t>& expected_shape) const {
  MOEX_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  if (!expected_shape.empty() && info.shape != expected_shape) {
    return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' has shape ",
                                             ShapeString(info.shape), ", the model needs ",
                                             ShapeString(expected_shape)));
  }
  if (info.dtype != "F32" && info.dtype != "BF16") {
    return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' is ", info.dtype,
                                             "; moex reads F32 and BF16"));
  }
  Tensor tensor(info.shape);
  if (info.dtype == "F32") {
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, tensor.data()));
  } else {
    std::vector<uint16_t> raw(tensor.values.size());
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, raw.data()));
    for (size_t i = 0; i < raw.size(); ++i) tensor.values[i] = Bf16ToFloat(raw[i]);
  }
  return tensor;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                              StorageDtype dtype) {
  const int64_t width = dtype == StorageDtype::kF32 ? 4 : 2;
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    int64_t bytes = tensor->size() * width;
    header[name] = {{"dtype", dtype == StorageDtype::kF32 ? "F32" : "BF16"},
                    {"shape", tensor->shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // align the data to 8 bytes
  std::string temporary = StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(StrCat("cannot write '", temporary, "': ", std::strerror(errno)));
    uint64_t length = text.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, tensor] : tensors) {
      if (dtype == StorageDtype::kF32) {
        out.write(reinterpret_cast<const char*>(tensor->data()), tensor->size() * 4);
      } else {
        std::vector<uint16_t> raw(tensor->values.size());
        for (size_t i = 0; i < raw.size(); ++i) raw[i] = FloatToBf16(tensor->values[i]);
        out.write(reinterpret_cast<const char*>(raw.data()), static_cast<std::streamsize>(raw.size() * 2));
      }
    }
    out.flush();
    if (!out) {
      std::remove(temporary.c_str());
      return absl::DataLossError(StrCat("error while writing '", temporary, "' (disk full?)"));
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    int error = errno;
    std::remove(temporary.c_str());
    return absl::PermissionDeniedError(StrCat("cannot move '", temporary, "' to '", path, "': ", std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace moex::model
