#include "moex/cluster/client_files.h"

#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "moex/core/status_macros.h"
#include "moex/core/echo.h"
#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "moex/model/config_view.h"
#include "moex/model/model_loader.h"
#include "moex/model/presets.h"
#include "moex/model/safetensors.h"

namespace moex::cluster {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMaxJsonBytes = int64_t{64} << 20;        // as model::ReadJsonFile
constexpr int64_t kMaxHeaderBytes = int64_t{100} << 20;     // one safetensors header, as the reader
constexpr int64_t kMaxHeaderBytesInAll = int64_t{256} << 20;  // every shard's header together
constexpr size_t kMaxShards = 4096;

absl::Status Bad(const std::string& subject, std::string_view why) {
  return absl::InvalidArgumentError(StrCat(subject, " ", why));
}

std::string RootsText(const std::vector<std::string>& roots) {
  if (roots.empty()) return "none: start moex serve with --data-root DIR";
  return absl::StrJoin(roots, ", ");
}

bool Under(const std::string& path, const std::string& root) {
  if (root == "/") return !path.empty() && path[0] == '/';
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/');
}

bool UnderAny(const std::string& path, const std::vector<std::string>& roots) {
  for (const std::string& root : roots) {
    if (Under(path, root)) return true;
  }
  return false;
}

// `path` with symbolic links and `..` followed, under one of `roots`, or
// why not. `subject` names it in errors ("spec.weights '/d/w'"); `outside`
// is appended to the error for a path outside the roots.
absl::StatusOr<std::string> Resolve(const std::string& subject, const std::string& path,
                                    const std::vector<std::string>& roots, std::string_view outside = "") {
  auto refused = [&] {
    return Bad(subject, StrCat("is outside the controller's data roots (", RootsText(roots), ")", outside));
  };
  std::error_code error;
  fs::path lexical = fs::path(path).is_absolute() ? fs::path(path) : fs::absolute(path, error);
  if (error) return Bad(subject, StrCat("cannot be resolved: ", error.message()));
  std::string normal = lexical.lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  char real[PATH_MAX];
  if (realpath(normal.c_str(), real) == nullptr) {
    const int why = errno;
    // A path outside every root is refused alike whether or not it exists:
    // the answer tells nothing of the controller's files.
    if (!UnderAny(normal, roots)) return refused();
    if (why == ENOENT || why == ENOTDIR) return Bad(subject, "does not exist");
    return Bad(subject, StrCat("cannot be resolved: ", std::strerror(why)));
  }
  if (!UnderAny(real, roots)) {
    if (UnderAny(normal, roots)) {
      return Bad(subject, StrCat("leads outside the controller's data roots (", RootsText(roots),
                                 ") through a symbolic link"));
    }
    return refused();
  }
  return std::string(real);
}

bool IsDirectory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool Exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

// A regular file opened for reading: never a FIFO, a device or a directory,
// and never followed through a link swapped in after Resolve.
class RegularFile {
 public:
  static absl::StatusOr<RegularFile> Open(const std::string& subject, const std::string& path) {
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return Bad(subject, StrCat("cannot be opened: ", std::strerror(errno)));
    RegularFile file(fd);
    struct stat st {};
    if (fstat(fd, &st) != 0) return Bad(subject, StrCat("cannot be read: ", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) return Bad(subject, "is not a regular file");
    file.size_ = static_cast<int64_t>(st.st_size);
    return file;
  }
  RegularFile(RegularFile&& other) noexcept : fd_(other.fd_), size_(other.size_) { other.fd_ = -1; }
  RegularFile& operator=(RegularFile&&) = delete;
  ~RegularFile() {
    if (fd_ >= 0) close(fd_);
  }
  int64_t size() const { return size_; }
  // Exactly `bytes` from `offset`, or false.
  bool ReadAt(int64_t offset, int64_t bytes, void* out) const {
    int64_t done = 0;
    while (done < bytes) {
      const ssize_t got = pread(fd_, static_cast<char*>(out) + done, static_cast<size_t>(bytes - done), offset + done);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return false;
      done += got;
    }
    return true;
  }

 private:
  explicit RegularFile(int fd) : fd_(fd) {}
  int fd_;
  int64_t size_ = 0;
};

// The whole file, at most kMaxJsonBytes, parsed as a JSON object.
absl::StatusOr<nlohmann::json> ReadJsonObject(const std::string& subject, const std::string& path) {
  MOEX_ASSIGN_OR_RETURN(RegularFile file, RegularFile::Open(subject, path));
  if (file.size() > kMaxJsonBytes) return Bad(subject, StrCat("is larger than ", kMaxJsonBytes >> 20, " MiB: not JSON moex reads"));
  std::string text(static_cast<size_t>(file.size()), '\0');
  if (!file.ReadAt(0, file.size(), text.data())) return Bad(subject, "cannot be read (it changed while being read?)");
  // The parser's message quotes what it read: only its verdict is kept.
  absl::StatusOr<nlohmann::json> json = model::ParseJsonText(text, "file");
  if (!json.ok()) return Bad(subject, "is not JSON (a JSON object)");
  return json;
}

// What is wrong with a config ParseModelConfig refused, from its message
// (source "config.json"), as a field name and a verdict: the message quotes
// the field's value, which stays out.
std::string ConfigProblem(const std::string& message) {
  if (message.find("unknown model_type") != std::string::npos) {
    return StrCat("field model_type names no model type moex reads (", absl::StrJoin(model::SupportedModelTypes(), ", "),
                  ")");
  }
  const size_t start = message.find("field '");
  if (start != std::string::npos) {
    const size_t begin = start + 7;
    const size_t end = message.find('\'', begin);
    if (end != std::string::npos && end > begin && end - begin <= 128) {
      const std::string field = message.substr(begin, end - begin);
      // Field names are the readers' own keys; anything else stays out.
      bool plain = true;
      for (char c : field) plain &= std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.';
      if (plain) {
        const bool missing = message.substr(end + 1, 11) == " is missing";
        return StrCat("field ", field, missing ? " is missing" : " is invalid");
      }
    }
  }
  return "not one moex reads";
}

// A safetensors file: its 8-byte header length fits the file, and the
// header describes tensors that fit its data. `header_budget` is what is
// left to read of headers in all (an index may name many shards).
absl::Status CheckSafetensors(const std::string& subject, const std::string& path, int64_t* header_budget) {
  MOEX_ASSIGN_OR_RETURN(RegularFile file, RegularFile::Open(subject, path));
  const absl::Status not_safetensors = Bad(subject, "is not a safetensors file");
  uint64_t header_bytes = 0;
  if (file.size() < 8 || !file.ReadAt(0, 8, &header_bytes)) return not_safetensors;
  if (header_bytes > static_cast<uint64_t>(kMaxHeaderBytes) || static_cast<int64_t>(header_bytes) > file.size() - 8) {
    return not_safetensors;
  }
  if (static_cast<int64_t>(header_bytes) > *header_budget) {
    return Bad(subject, StrCat("brings the checkpoint's headers past ", kMaxHeaderBytesInAll >> 20,
                               " MiB in all: not a checkpoint moex reads"));
  }
  *header_budget -= static_cast<int64_t>(header_bytes);
  std::string text(header_bytes, '\0');
  if (!file.ReadAt(8, static_cast<int64_t>(header_bytes), text.data())) return not_safetensors;
  std::map<std::string, model::TensorInfo> tensors;
  const int64_t data_bytes = file.size() - 8 - static_cast<int64_t>(header_bytes);
  if (!model::ParseSafetensorsHeader(text, data_bytes, path, &tensors).ok()) return not_safetensors;
  return absl::OkStatus();
}

// A model.safetensors.index.json: every shard it names under the roots and
// a safetensors file.
absl::Status CheckIndex(const std::string& subject, const std::string& path, const std::vector<std::string>& roots) {
  MOEX_ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonObject(subject, path));
  auto map = index.find("weight_map");
  if (map == index.end() || !map->is_object()) {
    return Bad(subject, "is not a safetensors index: field weight_map is missing or not an object");
  }
  // Shards in the order they first appear (by tensor name); their names are
  // the file's content, so errors number them instead.
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [tensor, shard] : map->items()) {
    if (!shard.is_string()) {
      return Bad(subject, "is not a safetensors index: field weight_map maps a tensor to something other than a file name");
    }
    if (seen.insert(shard.get<std::string>()).second) shards.push_back(shard.get<std::string>());
    if (shards.size() > kMaxShards) return Bad(subject, StrCat("names more than ", kMaxShards, " shard files"));
  }
  const fs::path folder = fs::path(path).parent_path();
  int64_t header_budget = kMaxHeaderBytesInAll;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string shard_subject = StrCat(subject, ": its shard ", i + 1, " of ", shards.size(), " (by tensor name)");
    if (shards[i].empty() || shards[i].find('\0') != std::string::npos) return Bad(shard_subject, "has no file name");
    MOEX_ASSIGN_OR_RETURN(std::string shard_path, Resolve(shard_subject, (folder / shards[i]).string(), roots));
    MOEX_RETURN_IF_ERROR(CheckSafetensors(shard_subject, shard_path, &header_budget));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> CanonicalDataRoots(const std::vector<std::string>& dirs) {
  std::vector<std::string> roots;
  for (const std::string& dir : dirs) {
    char real[PATH_MAX];
    if (dir.empty() || realpath(dir.c_str(), real) == nullptr) {
      return absl::InvalidArgumentError(StrCat("--data-root '", dir, "': ", dir.empty() ? "empty" : std::strerror(errno)));
    }
    if (!IsDirectory(real)) return absl::InvalidArgumentError(StrCat("--data-root '", dir, "' is not a directory"));
    roots.push_back(real);
  }
  return roots;
}

absl::StatusOr<std::string> CheckModelFile(const std::string& model, const std::vector<std::string>& roots) {
  std::vector<std::string> presets;
  for (const model::Preset& preset : model::AllPresets()) presets.emplace_back(preset.name);
  const std::string subject = StrCat("spec.model '", Echo(model), "'");
  absl::StatusOr<std::string> resolved =
      Resolve(subject, model, roots, StrCat("; or name a preset: ", absl::StrJoin(presets, ", ")));
  if (!resolved.ok() && model.find('/') == std::string::npos) {
    // A bare name is more likely a preset misspelt than a file.
    return Bad(subject, StrCat("is neither a preset (", absl::StrJoin(presets, ", "),
                               ") nor a file under the controller's data roots (", RootsText(roots), ")"));
  }
  MOEX_ASSIGN_OR_RETURN(std::string path, std::move(resolved));
  std::string file_subject = subject;
  if (IsDirectory(path)) {
    file_subject = StrCat("spec.model '", Echo((fs::path(model) / "config.json").string()), "'");
    MOEX_ASSIGN_OR_RETURN(path, Resolve(file_subject, (fs::path(path) / "config.json").string(), roots));
  }
  MOEX_ASSIGN_OR_RETURN(nlohmann::json config, ReadJsonObject(file_subject, path));
  absl::StatusOr<model::ModelArch> arch = model::ParseModelConfig(config, "config.json");
  if (!arch.ok()) return Bad(file_subject, StrCat("is not a model config: ", ConfigProblem(std::string(arch.status().message()))));
  return path;
}

absl::StatusOr<std::string> CheckWeightsFiles(const std::string& weights, const std::vector<std::string>& roots,
                                              const model::MoeLayerSpec& layer) {
  std::string subject = StrCat("spec.weights '", Echo(weights), "'");
  MOEX_ASSIGN_OR_RETURN(std::string path, Resolve(subject, weights, roots));
  if (IsDirectory(path)) {
    // As model::Checkpoint::Open: the index first.
    std::optional<std::string> inside;
    for (const char* name : {"model.safetensors.index.json", "model.safetensors"}) {
      if (!inside && Exists((fs::path(path) / name).string())) inside = name;
    }
    if (!inside) return Bad(subject, "holds neither model.safetensors.index.json nor model.safetensors");
    subject = StrCat("spec.weights '", Echo((fs::path(weights) / *inside).string()), "'");
    MOEX_ASSIGN_OR_RETURN(path, Resolve(subject, (fs::path(path) / *inside).string(), roots));
  }
  if (absl::EndsWith(path, ".json")) {
    MOEX_RETURN_IF_ERROR(CheckIndex(subject, path, roots));
  } else {
    int64_t header_budget = kMaxHeaderBytesInAll;
    MOEX_RETURN_IF_ERROR(CheckSafetensors(subject, path, &header_budget));
  }
  // The router of this layer, of its shape; the file's own shape stays out
  // of the message (it is the file's content).
  absl::StatusOr<model::Checkpoint> checkpoint = model::Checkpoint::Open(path);
  if (!checkpoint.ok()) return Bad(subject, "cannot be read as a checkpoint (it changed while being checked?)");
  const std::string router = model::WeightNamesFor(layer, &*checkpoint).router;
  const std::vector<int64_t> expected = {layer.num_experts, layer.hidden};
  absl::StatusOr<model::TensorInfo> info = checkpoint->Info(router);
  if (!info.ok()) return Bad(subject, StrCat("has no tensor '", router, "': not this model's layer"));
  if (info->shape != expected) {
    return Bad(subject, StrCat("holds '", router, "' of another shape than ", ShapeString(expected),
                               ": not this model's layer"));
  }
  return path;
}

}  // namespace moex::cluster
