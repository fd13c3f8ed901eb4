#include "moex/ep/moe_weights.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <optional>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/weight_cache.h"

namespace moex::ep {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t HashName(uint64_t seed, std::string_view name) {
  uint64_t h = 1469598103934665603ull ^ SplitMix64(seed);
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

Tensor RandomTensor(uint64_t seed, const std::string& name, std::vector<int64_t> shape, float scale) {
  Tensor tensor(std::move(shape));
  SeededFill(seed, name, 0, tensor.size(), scale, tensor.data());
  return tensor;
}

}  // namespace

float SeededUniform(uint64_t seed, std::string_view name, int64_t index) {
  uint64_t bits = SplitMix64(HashName(seed, name) + static_cast<uint64_t>(index));
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

void SeededFill(uint64_t seed, std::string_view name, int64_t first, int64_t count, float scale, float* out) {
  const uint64_t base = HashName(seed, name) + static_cast<uint64_t>(first);
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t bits = SplitMix64(base + static_cast<uint64_t>(i));
    out[i] = (static_cast<float>(bits >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
  }
}

absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts) {
  return LoadMoeWeights(spec, checkpoint, seed, experts, nullptr, nullptr);
}

namespace {

// Where a tensor's values come from, as the weight cache keys its entries:
// the checkpoint file's bytes (path, range, dtype, size, modification time)
// of each tensor behind it (a matrix's scales too), or the seed, scale and
// the dtype random experts are made in. Empty when it cannot be told
// (nothing is cached).
std::string SourceOf(const model::Checkpoint* checkpoint, uint64_t seed, const std::string& name, float scale,
                     WeightFormat random_format = WeightFormat::kF32) {
  if (checkpoint == nullptr) {
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &scale, sizeof(scale_bits));
    return random_format == WeightFormat::kF32
               ? StrCat("seed ", seed, " scale ", scale_bits)
               : StrCat("seed ", seed, " scale ", scale_bits, " as ", WeightFormatName(random_format));
  }
  std::string source;
  for (const std::string& tensor : checkpoint->MatrixTensors(name)) {
    absl::StatusOr<model::TensorInfo> info = checkpoint->Info(tensor);
    struct stat st {};
    if (!info.ok() || stat(info->file.c_str(), &st) != 0) return "";
    const int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    source += StrCat(source.empty() ? "" : "; ", "file ", info->file, " bytes ", info->begin, "-", info->end, " ",
                     info->dtype, " size ", static_cast<int64_t>(st.st_size), " mtime_ns ", mtime_ns, " inode ",
                     static_cast<int64_t>(st.st_ino));
  }
  return source;
}

// Random weights' scales: 1/sqrt(fan-in).
struct ExpertScales {
  float in, out;
};
ExpertScales ScalesFor(int64_t hidden, int64_t width) {
  return {1.0f / std::sqrt(static_cast<float>(hidden)), 1.0f / std::sqrt(static_cast<float>(width))};
}

}  // namespace

void ExpertWeights::CopyBytes(std::byte* out) const {
  gate.CopyBytes(out);
  up.CopyBytes(out + gate.bytes());
  down.CopyBytes(out + gate.bytes() + up.bytes());
}

ExpertWeights ExpertWeights::FromBytes(WeightFormat format, int64_t width, int64_t hidden, const std::byte* bytes) {
  ExpertWeights w;
  w.gate = StoredMatrix::FromBytes(format, width, hidden, bytes);
  w.up = StoredMatrix::FromBytes(format, width, hidden, bytes + w.gate.bytes());
  w.down = StoredMatrix::FromBytes(format, hidden, width, bytes + 2 * w.gate.bytes());
  return w;
}

int64_t MoeWeights::expert_bytes() const {
  int64_t bytes = 0;
  for (const auto& [e, w] : experts) bytes += w.bytes();
  return bytes;
}

absl::StatusOr<WeightFormat> ExpertFormatOf(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint,
                                            const WeightLoadOptions& options) {
  if (checkpoint == nullptr) return options.random_format;
  return checkpoint->MatrixFormat(WeightNamesFor(spec).Expert(0, "gate"));
}

absl::Status CacheExpert(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                         int64_t expert, const ExpertWeights& weights, const WeightCache& cache) {
  const MoeWeightNames names = WeightNamesFor(spec);
  const ExpertScales scale = ScalesFor(spec.hidden, spec.expert_width);
  const std::pair<const char*, const StoredMatrix*> projections[] = {
      {"gate", &weights.gate}, {"up", &weights.up}, {"down", &weights.down}};
  for (const auto& [projection, matrix] : projections) {
    const std::string name = names.Expert(expert, projection);
    const std::string source = SourceOf(checkpoint, seed, name,
                                        std::string_view(projection) == "down" ? scale.out : scale.in, matrix->format);
    if (source.empty() || cache.HoldsMatrix(name, source, matrix->format, matrix->rows, matrix->cols)) continue;
    MOEX_RETURN_IF_ERROR(cache.PutMatrix(name, source, *matrix));
  }
  return absl::OkStatus();
}

int64_t CountCachedExperts(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                           const std::vector<int64_t>& experts, WeightFormat format, const WeightCache& cache) {
  const MoeWeightNames names = WeightNamesFor(spec);
  const ExpertScales scale = ScalesFor(spec.hidden, spec.expert_width);
  const int64_t H = spec.hidden, F = spec.expert_width;
  int64_t whole = 0;
  for (int64_t e : experts) {
    bool held = true;
    for (const char* p : {"gate", "up", "down"}) {
      const bool down = std::string_view(p) == "down";
      const std::string name = names.Expert(e, p);
      const std::string source = SourceOf(checkpoint, seed, name, down ? scale.out : scale.in, format);
      held = held && !source.empty() && cache.HoldsMatrix(name, source, format, down ? H : F, down ? F : H);
    }
    whole += held ? 1 : 0;
  }
  return whole;
}

absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts, const WeightCache* cache,
                                          WeightLoadReport* report, const WeightLoadOptions& options) {
  const MoeWeightNames names = WeightNamesFor(spec);
  const int64_t H = spec.hidden, F = spec.expert_width, E = spec.num_experts;
  WeightLoadReport unused;
  WeightLoadReport& r = report != nullptr ? *report : unused;
  // Router, bias and gate: fp32 tensors.
  auto get = [&](const std::string& name, std::vector<int64_t> shape,
                 float scale) -> absl::StatusOr<Tensor> {
    const std::string source = cache != nullptr ? SourceOf(checkpoint, seed, name, scale) : "";
    if (!source.empty()) {
      std::string rejected;
      std::optional<Tensor> hit = cache->Get(name, source, shape, &rejected);
      if (!rejected.empty()) r.rejected.push_back(std::move(rejected));
      if (hit) {
        ++r.tensors_from_cache;
        r.bytes_from_cache += hit->size() * static_cast<int64_t>(sizeof(float));
        return std::move(*hit);
      }
    }
    absl::StatusOr<Tensor> loaded =
        checkpoint != nullptr ? checkpoint->Read(name, shape) : RandomTensor(seed, name, std::move(shape), scale);
    if (!loaded.ok()) return loaded;
    ++r.tensors_loaded;
    r.bytes_loaded += loaded->size() * static_cast<int64_t>(sizeof(float));
    if (!source.empty() && r.put_error.empty()) {
      absl::Status put = cache->Put(name, source, *loaded);
      if (!put.ok()) r.put_error = std::string(put.message());
    }
    return loaded;
  };
  // Expert projections: kept in their stored dtype.
  auto get_matrix = [&](const std::string& name, int64_t rows, int64_t cols,
                        float scale) -> absl::StatusOr<StoredMatrix> {
    WeightFormat format = options.random_format;
    if (checkpoint != nullptr) {
      MOEX_ASSIGN_OR_RETURN(format, checkpoint->MatrixFormat(name));
    }
    const std::string source = cache != nullptr ? SourceOf(checkpoint, seed, name, scale, format) : "";
    if (!source.empty()) {
      std::string rejected;
      std::optional<StoredMatrix> hit = cache->GetMatrix(name, source, format, rows, cols, &rejected);
      if (!rejected.empty()) r.rejected.push_back(std::move(rejected));
      if (hit) {
        ++r.tensors_from_cache;
        r.bytes_from_cache += hit->bytes();
        return std::move(*hit);
      }
    }
    StoredMatrix loaded;
    if (checkpoint != nullptr) {
      MOEX_ASSIGN_OR_RETURN(loaded, checkpoint->ReadMatrix(name, rows, cols, options.map_checkpoint));
    } else if (format == WeightFormat::kF32) {
      loaded = StoredMatrix::FromTensor(RandomTensor(seed, name, {rows, cols}, scale));
    } else {
      MOEX_ASSIGN_OR_RETURN(loaded, StoredMatrix::Quantize(RandomTensor(seed, name, {rows, cols}, scale), format));
    }
    ++r.tensors_loaded;
    r.bytes_loaded += loaded.bytes();
    if (!source.empty() && r.put_error.empty()) {
      absl::Status put = cache->PutMatrix(name, source, loaded);
      if (!put.ok()) r.put_error = std::string(put.message());
    }
    return loaded;
  };
  auto expert = [&](auto name_of, int64_t width) -> absl::StatusOr<ExpertWeights> {
    ExpertWeights w;
    const ExpertScales scale = ScalesFor(H, width);
    MOEX_ASSIGN_OR_RETURN(w.gate, get_matrix(name_of("gate"), width, H, scale.in));
    MOEX_ASSIGN_OR_RETURN(w.up, get_matrix(name_of("up"), width, H, scale.in));
    MOEX_ASSIGN_OR_RETURN(w.down, get_matrix(name_of("down"), H, width, scale.out));
    if (w.up.format != w.gate.format || w.down.format != w.gate.format) {
      return absl::InvalidArgumentError(StrCat("'", name_of("gate"), "' is ", WeightFormatName(w.gate.format), ", '",
                                               name_of("up"), "' ", WeightFormatName(w.up.format), " and '",
                                               name_of("down"), "' ", WeightFormatName(w.down.format),
                                               ": moex needs an expert's projections in one dtype"));
    }
    return w;
  };
  MoeWeights weights;
  MOEX_ASSIGN_OR_RETURN(weights.expert_format, ExpertFormatOf(spec, checkpoint, options));
  MOEX_ASSIGN_OR_RETURN(weights.router, get(names.router, {E, H}, 1.0f / std::sqrt(static_cast<float>(H))));
  if (spec.router.has_correction_bias) {
    MOEX_ASSIGN_OR_RETURN(weights.correction_bias, get(names.correction_bias, {E}, 0.05f));
  }
  for (int64_t e : experts) {
    if (e < 0 || e >= E) return absl::InvalidArgumentError(StrCat("expert ", e, " outside [0, ", E, ")"));
    if (weights.experts.count(e)) continue;
    const int64_t hits_before = r.tensors_from_cache;
    MOEX_ASSIGN_OR_RETURN(weights.experts[e],
                          expert([&](std::string_view p) { return names.Expert(e, p); }, F));
    if (weights.experts[e].format() != weights.expert_format) {
      return absl::InvalidArgumentError(StrCat("expert ", e, " of layer ", spec.layer, " is ",
                                               WeightFormatName(weights.experts[e].format()), ", expert 0 ",
                                               WeightFormatName(weights.expert_format),
                                               ": moex needs a layer's routed experts in one dtype"));
    }
    ++(r.tensors_from_cache - hits_before == 3 ? r.experts_from_cache : r.experts_loaded);
  }
  if (spec.shared_width > 0) {
    MOEX_ASSIGN_OR_RETURN(weights.shared,
                          expert([&](std::string_view p) { return names.Shared(p); }, spec.shared_width));
    if (spec.shared_expert_gate) {
      MOEX_ASSIGN_OR_RETURN(weights.shared_gate, get(names.shared_gate, {1, H}, 1.0f / std::sqrt(static_cast<float>(H))));
    }
  }
  return weights;
}

absl::Status SaveMoeWeights(const MoeLayerSpec& spec, const MoeWeights& weights,
                            const std::string& path, model::StorageDtype dtype) {
  const MoeWeightNames names = WeightNamesFor(spec);
  std::deque<Tensor> dequantised;  // stable addresses
  std::vector<std::pair<std::string, const Tensor*>> named;
  auto add = [&](std::string name, const Tensor& t) { named.emplace_back(std::move(name), &t); };
  auto add_matrix = [&](std::string name, const StoredMatrix& m) {
    dequantised.push_back(m.ToTensor());
    add(std::move(name), dequantised.back());
  };
  add(names.router, weights.router);
  if (!weights.correction_bias.values.empty()) add(names.correction_bias, weights.correction_bias);
  for (const auto& [e, w] : weights.experts) {
    add_matrix(names.Expert(e, "gate"), w.gate);
    add_matrix(names.Expert(e, "up"), w.up);
    add_matrix(names.Expert(e, "down"), w.down);
  }
  if (weights.shared) {
    add_matrix(names.Shared("gate"), weights.shared->gate);
    add_matrix(names.Shared("up"), weights.shared->up);
    add_matrix(names.Shared("down"), weights.shared->down);
  }
  if (!weights.shared_gate.values.empty()) add(names.shared_gate, weights.shared_gate);
  return model::WriteSafetensors(path, named, dtype);
}

}  // namespace moex::ep
