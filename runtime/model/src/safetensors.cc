#include "moex/model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <limits>
#include <memory>

#include "moex/core/mapped_file.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/model/config_view.h"
#include "moex/model/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace moex::model {
namespace {

constexpr int64_t kMaxHeaderBytes = int64_t{100} << 20;  // as the reference implementation

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
    int64_t width = SafetensorsDtypeBytes(info.dtype);
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

namespace {

// checkpoint.Info(name), and an error naming both shapes where
// `expected_shape` is given and differs.
absl::StatusOr<TensorInfo> InfoShaped(const Checkpoint& checkpoint, const std::string& name,
                                      const std::vector<int64_t>& expected_shape) {
  MOEX_ASSIGN_OR_RETURN(TensorInfo info, checkpoint.Info(name));
  if (!expected_shape.empty() && info.shape != expected_shape) {
    return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' has shape ",
                                             ShapeString(info.shape), ", the model needs ",
                                             ShapeString(expected_shape)));
  }
  return info;
}

}  // namespace

absl::StatusOr<Tensor> Checkpoint::Read(const std::string& name,
                                        const std::vector<int64_t>& expected_shape) const {
  MOEX_ASSIGN_OR_RETURN(TensorInfo info, InfoShaped(*this, name, expected_shape));
  if (info.dtype != "F32" && info.dtype != "BF16" && info.dtype != "F16") {
    return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' is ", info.dtype,
                                             "; moex reads F32, BF16 and F16 here (F8_E4M3 and MXFP4 only for "
                                             "expert weights)"));
  }
  Tensor tensor(info.shape);
  if (info.dtype == "F32") {
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, tensor.data()));
  } else {
    std::vector<uint16_t> raw(tensor.values.size());
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, raw.data()));
    for (size_t i = 0; i < raw.size(); ++i) {
      tensor.values[i] = info.dtype == "BF16" ? Bf16ToFloat(raw[i]) : F16ToFloat(raw[i]);
    }
  }
  return tensor;
}

absl::StatusOr<std::vector<int64_t>> Checkpoint::ReadIntegers(const std::string& name,
                                                              const std::vector<int64_t>& expected_shape) const {
  MOEX_ASSIGN_OR_RETURN(TensorInfo info, InfoShaped(*this, name, expected_shape));
  if (info.dtype != "I64" && info.dtype != "I32") {
    return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' is ", info.dtype,
                                             "; moex reads it as I64 or I32"));
  }
  int64_t count = 1;
  for (int64_t d : info.shape) count *= d;
  std::vector<int64_t> out(static_cast<size_t>(count));
  if (info.dtype == "I64") {
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, out.data()));
  } else {
    std::vector<int32_t> narrow(static_cast<size_t>(count));
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, info.end - info.begin, narrow.data()));
    std::copy(narrow.begin(), narrow.end(), out.begin());
  }
  return out;
}

namespace {

std::string MxfpBase(const std::string& name) {
  constexpr std::string_view kSuffix = ".weight";
  return name.size() > kSuffix.size() && name.ends_with(kSuffix) ? name.substr(0, name.size() - kSuffix.size()) : name;
}

// The bytes of one tensor, mapped or copied, and what keeps them.
struct Piece {
  const std::byte* data = nullptr;
  std::shared_ptr<const void> keep;
};

absl::StatusOr<Piece> LoadPiece(const TensorInfo& info, bool map) {
  Piece piece;
  const int64_t bytes = info.end - info.begin;
  if (bytes == 0) return piece;
  if (map) {
    MOEX_ASSIGN_OR_RETURN(std::shared_ptr<const MappedRange> range, MappedRange::Map(info.file, info.begin, bytes));
    piece.data = range->data();
    piece.keep = std::move(range);
  } else {
    auto owned = std::shared_ptr<float[]>(new float[static_cast<size_t>((bytes + 3) / 4)]);
    MOEX_RETURN_IF_ERROR(ReadRange(info.file, info.begin, bytes, owned.get()));
    piece.data = reinterpret_cast<const std::byte*>(owned.get());
    piece.keep = std::move(owned);
  }
  return piece;
}

float E8M0ToFloat(uint8_t bits) {
  return bits == 0xff ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.0f, static_cast<int>(bits) - 127);
}

// `count` E8M0 scales (one byte each, 2^(b-127); 0xff is NaN) as F32, owned.
// A NaN is refused here, naming the tensor and the place.
absl::StatusOr<Piece> WidenE8M0(const Piece& e8m0, int64_t count, const std::string& tensor, const std::string& file) {
  auto owned = std::shared_ptr<float[]>(new float[static_cast<size_t>(std::max<int64_t>(count, 1))]);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t bits = static_cast<uint8_t>(e8m0.data[i]);
    if (bits == 0xff) {
      return absl::DataLossError(StrCat("'", file, "': tensor '", tensor, "' holds the E8M0 NaN (0xff) at index ", i,
                                        "; a block scale must be finite and positive (corrupt checkpoint?)"));
    }
    owned[i] = E8M0ToFloat(bits);
  }
  Piece piece;
  piece.data = reinterpret_cast<const std::byte*>(owned.get());
  piece.keep = std::move(owned);
  return piece;
}

}  // namespace

absl::StatusOr<WeightFormat> Checkpoint::MatrixFormat(const std::string& name) const {
  auto it = tensors_.find(name);
  const std::string base = MxfpBase(name);
  if (it == tensors_.end()) {
    if (tensors_.count(base + "_blocks")) {
      if (!tensors_.count(base + "_scales")) {
        return absl::NotFoundError(StrCat("checkpoint '", path_, "' has '", base, "_blocks' (MXFP4) but not its scales '",
                                          base, "_scales'"));
      }
      return WeightFormat::kMXFP4;
    }
    return absl::NotFoundError(StrCat("checkpoint '", path_, "' has no tensor '", name, "' (nor MXFP4 '", base,
                                      "_blocks')"));
  }
  const TensorInfo& info = it->second;
  if (info.dtype == "F32") return WeightFormat::kF32;
  if (info.dtype == "BF16") return WeightFormat::kBF16;
  if (info.dtype == "F16") return WeightFormat::kF16;
  const bool e8m0_scale = tensors_.count(base + ".scale") > 0;  // DeepSeek-V4's releases
  if (info.dtype == "F8_E4M3") {
    if (!tensors_.count(name + "_scale_inv") && !e8m0_scale) {
      return absl::NotFoundError(StrCat("'", info.file, "': tensor '", name, "' is F8_E4M3 but the checkpoint has no '",
                                        name, "_scale_inv' (its 128x128 block scales) nor '", base, ".scale'"));
    }
    return WeightFormat::kFP8Block;
  }
  if (info.dtype == "I8") {
    // DeepSeek-V4's routed experts: FP4 e2m1 two to a byte, its E8M0 scale
    // per 32 inputs in '<base>.scale'.
    if (!e8m0_scale) {
      return absl::NotFoundError(StrCat("'", info.file, "': tensor '", name, "' is I8 (packed FP4, DeepSeek-V4) but "
                                        "the checkpoint has no '", base, ".scale' (its E8M0 scales)"));
    }
    return WeightFormat::kMXFP4;
  }
  return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", name, "' is ", info.dtype,
                                           "; moex holds expert weights in F32, BF16, F16, F8_E4M3 (with '", name,
                                           "_scale_inv' or '", base, ".scale'), MXFP4 ('", base,
                                           "_blocks' and '_scales') or I8 packed FP4 (with '", base, ".scale')"));
}

std::vector<std::string> Checkpoint::MatrixTensors(const std::string& name) const {
  absl::StatusOr<WeightFormat> format = MatrixFormat(name);
  if (!format.ok()) return {name};
  const std::string base = MxfpBase(name);
  if (*format == WeightFormat::kFP8Block) {
    return {name, tensors_.count(name + "_scale_inv") ? name + "_scale_inv" : base + ".scale"};
  }
  if (*format == WeightFormat::kMXFP4) {
    if (tensors_.count(name)) return {name, base + ".scale"};  // DeepSeek-V4's I8
    return {base + "_blocks", base + "_scales"};
  }
  return {name};
}

absl::StatusOr<StoredMatrix> Checkpoint::ReadMatrix(const std::string& name, int64_t rows, int64_t cols, bool map,
                                                    std::optional<StackedSlice> slice) const {
  MOEX_ASSIGN_OR_RETURN(WeightFormat format, MatrixFormat(name));
  const std::vector<std::string> names = MatrixTensors(name);
  if (slice && (slice->count < 1 || slice->index < 0 || slice->index >= slice->count)) {
    return absl::OutOfRangeError(StrCat("matrix ", slice->index, " of the ", slice->count, " stacked in '", name, "'"));
  }
  auto piece = [&](const std::string& tensor, const std::vector<int64_t>& shape,
                   std::string_view dtype) -> absl::StatusOr<Piece> {
    MOEX_ASSIGN_OR_RETURN(TensorInfo info, Info(tensor));
    if (info.dtype != dtype) {
      return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", tensor, "' is ", info.dtype, "; ",
                                               WeightFormatName(format), " weights need it ", dtype));
    }
    std::vector<int64_t> want = shape;
    bool matches = info.shape == want;
    if (slice) {
      // [count, ...shape], or the first dimension times count.
      want.insert(want.begin(), slice->count);
      std::vector<int64_t> flat = shape;
      if (!flat.empty()) flat[0] *= slice->count;
      matches = info.shape == want || (!flat.empty() && info.shape == flat);
    }
    if (!matches) {
      std::string flat_too;
      if (slice && !shape.empty()) {
        std::vector<int64_t> flat = shape;
        flat[0] *= slice->count;
        flat_too = StrCat(" (or ", ShapeString(flat), ")");
      }
      return absl::InvalidArgumentError(StrCat("'", info.file, "': tensor '", tensor, "' has shape ",
                                               ShapeString(info.shape), ", the model needs ", ShapeString(want),
                                               flat_too));
    }
    if (slice) {
      const int64_t each = (info.end - info.begin) / slice->count;
      info.begin += slice->index * each;
      info.end = info.begin + each;
    }
    return LoadPiece(info, map);
  };
  if (format == WeightFormat::kMXFP4 && cols % kMxfp4BlockSize != 0) {
    return absl::InvalidArgumentError(StrCat("tensor '", name, "' is MXFP4 with ", cols,
                                             " columns; MXFP4 needs a multiple of 32"));
  }
  StoredMatrix m;
  m.format = format;
  m.rows = rows;
  m.cols = cols;
  Piece values, scales;
  // DeepSeek-V4 stores its scales as E8M0 ('<base>.scale'): FP8 block
  // scales are widened to the F32 the kernels take, FP4 ones kept as bytes.
  const bool e8m0_scales = names.size() == 2 && names[1].ends_with(".scale");
  if (format == WeightFormat::kFP8Block) {
    MOEX_ASSIGN_OR_RETURN(values, piece(names[0], {rows, cols}, "F8_E4M3"));
    const std::vector<int64_t> shape = StoredMatrix::ScaleShape(format, rows, cols);
    if (e8m0_scales) {
      MOEX_ASSIGN_OR_RETURN(Piece e8m0, piece(names[1], shape, "F8_E8M0"));
      MOEX_ASSIGN_OR_RETURN(scales, WidenE8M0(e8m0, shape[0] * shape[1], names[1], Info(names[1])->file));
    } else {
      MOEX_ASSIGN_OR_RETURN(scales, piece(names[1], shape, "F32"));
    }
  } else if (format == WeightFormat::kMXFP4 && e8m0_scales) {
    MOEX_ASSIGN_OR_RETURN(values, piece(names[0], {rows, cols / 2}, "I8"));
    MOEX_ASSIGN_OR_RETURN(scales, piece(names[1], StoredMatrix::ScaleShape(format, rows, cols), "F8_E8M0"));
  } else if (format == WeightFormat::kMXFP4) {
    MOEX_ASSIGN_OR_RETURN(values, piece(names[0], {rows, cols / kMxfp4BlockSize, 16}, "U8"));
    MOEX_ASSIGN_OR_RETURN(scales, piece(names[1], StoredMatrix::ScaleShape(format, rows, cols), "U8"));
  } else {
    const char* dtype = format == WeightFormat::kF32 ? "F32" : format == WeightFormat::kBF16 ? "BF16" : "F16";
    MOEX_ASSIGN_OR_RETURN(values, piece(names[0], {rows, cols}, dtype));
  }
  // A scale that is not a finite positive number makes every weight of its
  // block garbage: refuse it by its place.
  const int64_t scale_count = format == WeightFormat::kFP8Block ? m.scale_bytes() / 4 : m.scale_bytes();
  for (int64_t i = 0; i < scale_count; ++i) {
    float scale;
    if (format == WeightFormat::kFP8Block) {
      std::memcpy(&scale, scales.data + 4 * i, 4);
    } else {
      scale = E8M0ToFloat(static_cast<uint8_t>(scales.data[i]));
    }
    if (!std::isfinite(scale) || !(scale > 0)) {
      const std::vector<int64_t> shape = StoredMatrix::ScaleShape(format, rows, cols);
      return absl::DataLossError(StrCat("'", Info(names[1])->file, "': tensor '", names[1], "' holds ", scale,
                                        " at [", i / shape[1], ", ", i % shape[1],
                                        "]; a block scale must be finite and positive (corrupt checkpoint?)"));
    }
  }
  m.values = values.data;
  m.scales = scales.data;
  m.keep = std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(std::move(values.keep),
                                                                                                 std::move(scales.keep));
  return m;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                              StorageDtype dtype, const std::vector<IntegerTensor>& integers) {
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
  for (const IntegerTensor& t : integers) {
    const int64_t bytes = static_cast<int64_t>(t.values.size()) * 8;
    header[t.name] = {{"dtype", "I64"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
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
    for (const IntegerTensor& t : integers) {
      out.write(reinterpret_cast<const char*>(t.values.data()), static_cast<std::streamsize>(t.values.size() * 8));
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
