#include "moex/ep/moe_weights.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <optional>
#include <random>

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

int64_t ExpertWeights::bytes() const {
  return gate.bytes() + up.bytes() + down.bytes() +
         4 * static_cast<int64_t>(gate_bias.size() + up_bias.size() + down_bias.size());
}

void ExpertWeights::CopyBytes(std::byte* out) const {
  for (const StoredMatrix* m : {&gate, &up, &down}) {
    m->CopyBytes(out);
    out += m->bytes();
  }
  for (const std::vector<float>* b : {&gate_bias, &up_bias, &down_bias}) {
    if (!b->empty()) std::memcpy(out, b->data(), b->size() * sizeof(float));
    out += b->size() * sizeof(float);
  }
}

ExpertWeights ExpertWeights::FromBytes(const MoeLayerSpec& spec, WeightFormat format, const std::byte* bytes) {
  const int64_t F = spec.expert_width, H = spec.hidden;
  ExpertWeights w;
  if (spec.mlp.gated()) {
    w.gate = StoredMatrix::FromBytes(format, F, H, bytes);
    bytes += w.gate.bytes();
  }
  w.up = StoredMatrix::FromBytes(format, F, H, bytes);
  bytes += w.up.bytes();
  w.down = StoredMatrix::FromBytes(format, H, F, bytes);
  bytes += w.down.bytes();
  if (spec.mlp.biases) {
    auto take = [&](std::vector<float>* b, int64_t n) {
      b->resize(n);
      std::memcpy(b->data(), bytes, n * sizeof(float));
      bytes += n * sizeof(float);
    };
    if (spec.mlp.gated()) take(&w.gate_bias, F);
    take(&w.up_bias, F);
    take(&w.down_bias, H);
  }
  return w;
}

int64_t MoeWeights::expert_bytes() const {
  int64_t bytes = 0;
  for (const auto& [e, w] : experts) bytes += w.bytes();
  return bytes;
}

namespace {

// The projections an expert MLP has, in CopyBytes' order.
std::vector<const char*> Projections(const model::ExpertMlpSpec& mlp) {
  if (mlp.gated()) return {"gate", "up", "down"};
  return {"up", "down"};
}

// The checkpoint tensor a routed expert's projection is read from (its
// scales and blocks follow it in MatrixTensors).
std::string StoredTensor(const MoeWeightNames& names, int64_t expert, std::string_view projection) {
  switch (names.layout) {
    case model::ExpertLayout::kPerExpert: return names.Expert(expert, projection);
    case model::ExpertLayout::kFusedGateUp:
    case model::ExpertLayout::kFusedInterleaved:
    case model::ExpertLayout::kStackedRows: return names.Stacked(projection == "down" ? "down" : "gate_up");
    case model::ExpertLayout::kDbrx:
      return names.Stacked(projection == "gate" ? "w1" : projection == "up" ? "v1" : "w2");
  }
  return "";
}

// Routed expert `e`'s projection from the checkpoint, in [out, in]
// orientation, whatever the family's layout.
absl::StatusOr<StoredMatrix> ReadProjection(const model::Checkpoint& checkpoint, const MoeLayerSpec& spec,
                                            const MoeWeightNames& names, int64_t e, std::string_view projection,
                                            bool map) {
  const int64_t F = spec.expert_width, H = spec.hidden;
  const bool down = projection == "down";
  const std::string tensor = StoredTensor(names, e, projection);
  const model::StackedSlice slice{.index = e, .count = spec.num_experts};
  switch (names.layout) {
    case model::ExpertLayout::kPerExpert:
      return checkpoint.ReadMatrix(tensor, down ? spec.hidden : F, down ? F : H, map);
    case model::ExpertLayout::kFusedGateUp: {
      // gate_up [E, H, 2F] (gate: columns [0, F)), down [E, F, H]: x . W.
      if (down) {
        MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, F, H, map, slice));
        return stored.ColumnsTransposed(0, 1, H);
      }
      MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, H, 2 * F, map, slice));
      return stored.ColumnsTransposed(projection == "gate" ? 0 : F, 1, F);
    }
    case model::ExpertLayout::kFusedInterleaved: {
      // MXFP4: [out, in] blocks, gate and up interleaved by row. Otherwise
      // (bf16 releases): [in, out], interleaved by column.
      MOEX_ASSIGN_OR_RETURN(WeightFormat format, checkpoint.MatrixFormat(tensor));
      const int64_t parity = projection == "gate" ? 0 : 1;
      if (format == WeightFormat::kMXFP4) {
        if (down) return checkpoint.ReadMatrix(tensor, H, F, map, slice);
        MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, 2 * F, H, map, slice));
        return stored.SelectRows(parity, 2, F);
      }
      if (down) {
        MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, F, H, map, slice));
        return stored.ColumnsTransposed(0, 1, H);
      }
      MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, H, 2 * F, map, slice));
      return stored.ColumnsTransposed(parity, 2, F);
    }
    case model::ExpertLayout::kStackedRows: {
      // gate_up [E, 2F, H] (gate: rows [0, F)), down [E, H, F]: no transpose.
      if (down) return checkpoint.ReadMatrix(tensor, H, F, map, slice);
      MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, 2 * F, H, map, slice));
      return stored.SelectRows(projection == "gate" ? 0 : F, 1, F);
    }
    case model::ExpertLayout::kDbrx: {
      // w1, v1, w2 [E*F, H]; the down projection is w2's slice transposed.
      MOEX_ASSIGN_OR_RETURN(StoredMatrix stored, checkpoint.ReadMatrix(tensor, F, H, map, slice));
      if (down) return stored.ColumnsTransposed(0, 1, H);
      return stored;
    }
  }
  return absl::InternalError("unknown expert layout");
}

// Every routed expert's biases (gpt-oss): read once, sliced per expert.
struct StackedBiases {
  Tensor gate_up;  // [E, 2F], gate and up interleaved
  Tensor down;     // [E, H]
};

void SliceBiases(const StackedBiases& all, int64_t e, int64_t F, int64_t H, ExpertWeights* w) {
  w->gate_bias.resize(F);
  w->up_bias.resize(F);
  for (int64_t f = 0; f < F; ++f) {
    w->gate_bias[f] = all.gate_up.values[e * 2 * F + 2 * f];
    w->up_bias[f] = all.gate_up.values[e * 2 * F + 2 * f + 1];
  }
  w->down_bias.assign(all.down.values.begin() + e * H, all.down.values.begin() + (e + 1) * H);
}

}  // namespace

absl::StatusOr<WeightFormat> ExpertFormatOf(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint,
                                            const WeightLoadOptions& options) {
  if (checkpoint == nullptr) return options.random_format;
  return checkpoint->MatrixFormat(WeightNamesFor(spec, checkpoint).FormatTensor(spec.mlp.gated()));
}

bool ExpertsUsedInPlace(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint) {
  return checkpoint != nullptr && WeightNamesFor(spec, checkpoint).layout == model::ExpertLayout::kPerExpert;
}

absl::Status CacheExpert(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                         int64_t expert, const ExpertWeights& weights, const WeightCache& cache) {
  const MoeWeightNames names = WeightNamesFor(spec, checkpoint);
  const ExpertScales scale = ScalesFor(spec.hidden, spec.expert_width);
  for (const char* projection : Projections(spec.mlp)) {
    const StoredMatrix* matrix = std::string_view(projection) == "gate" ? &weights.gate
                                 : std::string_view(projection) == "up" ? &weights.up
                                                                        : &weights.down;
    const std::string name = names.Expert(expert, projection);
    const std::string source = SourceOf(checkpoint, seed, StoredTensor(names, expert, projection),
                                        std::string_view(projection) == "down" ? scale.out : scale.in, matrix->format);
    if (source.empty() || cache.HoldsMatrix(name, source, matrix->format, matrix->rows, matrix->cols)) continue;
    MOEX_RETURN_IF_ERROR(cache.PutMatrix(name, source, *matrix));
  }
  return absl::OkStatus();
}

int64_t CountCachedExperts(const MoeLayerSpec& spec, const model::Checkpoint* checkpoint, uint64_t seed,
                           const std::vector<int64_t>& experts, WeightFormat format, const WeightCache& cache) {
  const MoeWeightNames names = WeightNamesFor(spec, checkpoint);
  const ExpertScales scale = ScalesFor(spec.hidden, spec.expert_width);
  const int64_t H = spec.hidden, F = spec.expert_width;
  int64_t whole = 0;
  for (int64_t e : experts) {
    bool held = true;
    for (const char* p : Projections(spec.mlp)) {
      const bool down = std::string_view(p) == "down";
      const std::string source =
          SourceOf(checkpoint, seed, StoredTensor(names, e, p), down ? scale.out : scale.in, format);
      held = held && !source.empty() && cache.HoldsMatrix(names.Expert(e, p), source, format, down ? H : F, down ? F : H);
    }
    whole += held ? 1 : 0;
  }
  return whole;
}

namespace {

// A hash-routed layer's table [vocab, k]: the checkpoint's (I64 or I32, each
// entry an expert), or k distinct experts a row drawn from `seed`.
absl::StatusOr<std::vector<int32_t>> LoadTokenTable(const MoeLayerSpec& spec, const MoeWeightNames& names,
                                                    const model::Checkpoint* checkpoint, uint64_t seed) {
  const int64_t V = spec.vocab_size, k = spec.top_k, E = spec.num_experts;
  std::vector<int32_t> table(V * k);
  if (checkpoint == nullptr) {
    std::mt19937_64 rng(seed ^ 0x7469643265696400ULL);  // "tid2eid"
    std::vector<int32_t> experts(E);
    for (int64_t v = 0; v < V; ++v) {
      // The first k of a partial Fisher-Yates shuffle.
      for (int64_t e = 0; e < E; ++e) experts[e] = static_cast<int32_t>(e);
      for (int64_t j = 0; j < k; ++j) {
        std::swap(experts[j], experts[j + static_cast<int64_t>(rng() % static_cast<uint64_t>(E - j))]);
        table[v * k + j] = experts[j];
      }
    }
    return table;
  }
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> stored, checkpoint->ReadIntegers(names.token_table, {V, k}));
  for (int64_t i = 0; i < V * k; ++i) {
    if (stored[i] < 0 || stored[i] >= E) {
      return absl::DataLossError(StrCat("'", checkpoint->path(), "': tensor '", names.token_table, "' holds expert ",
                                        stored[i], " at [", i / k, ", ", i % k, "]; the layer has experts 0 to ",
                                        E - 1));
    }
    table[i] = static_cast<int32_t>(stored[i]);
  }
  return table;
}

}  // namespace

absl::StatusOr<MoeWeights> LoadMoeWeights(const MoeLayerSpec& spec,
                                          const model::Checkpoint* checkpoint, uint64_t seed,
                                          const std::vector<int64_t>& experts, const WeightCache* cache,
                                          WeightLoadReport* report, const WeightLoadOptions& options) {
  const MoeWeightNames names = WeightNamesFor(spec, checkpoint);
  const int64_t H = spec.hidden, F = spec.expert_width, E = spec.num_experts;
  WeightLoadReport unused;
  WeightLoadReport& r = report != nullptr ? *report : unused;
  // Router, biases and gate: fp32 tensors.
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
  // Expert projections: kept in their stored dtype. `name` keys the cache
  // and seeds random weights; `tensor` is what the checkpoint holds.
  auto get_matrix = [&](const std::string& name, const std::string& tensor, int64_t rows, int64_t cols, float scale,
                        auto read) -> absl::StatusOr<StoredMatrix> {
    WeightFormat format = options.random_format;
    if (checkpoint != nullptr) {
      MOEX_ASSIGN_OR_RETURN(format, checkpoint->MatrixFormat(tensor));
    }
    const std::string source = cache != nullptr ? SourceOf(checkpoint, seed, tensor, scale, format) : "";
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
      MOEX_ASSIGN_OR_RETURN(loaded, read());
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
  // An expert MLP's projections, all in one dtype. `name_of` and
  // `tensor_of` give get_matrix's name and tensor; `read_of` reads one.
  auto expert = [&](const model::ExpertMlpSpec& mlp, int64_t width, auto name_of, auto tensor_of,
                    auto read_of) -> absl::StatusOr<ExpertWeights> {
    ExpertWeights w;
    const ExpertScales scale = ScalesFor(H, width);
    for (const char* p : Projections(mlp)) {
      const bool down = std::string_view(p) == "down";
      StoredMatrix* out = std::string_view(p) == "gate" ? &w.gate : std::string_view(p) == "up" ? &w.up : &w.down;
      MOEX_ASSIGN_OR_RETURN(*out, get_matrix(name_of(p), tensor_of(p), down ? H : width, down ? width : H,
                                             down ? scale.out : scale.in, [&] { return read_of(p); }));
    }
    const bool one_dtype =
        w.down.format == w.up.format && (!mlp.gated() || w.gate.format == w.up.format);
    if (!one_dtype) {
      std::string formats;
      for (const char* p : Projections(mlp)) {
        const StoredMatrix& m = std::string_view(p) == "gate" ? w.gate : std::string_view(p) == "up" ? w.up : w.down;
        formats += StrCat(formats.empty() ? "" : ", ", "'", tensor_of(p), "' ", WeightFormatName(m.format));
      }
      return absl::InvalidArgumentError(StrCat(formats, ": moex needs an expert's projections in one dtype"));
    }
    return w;
  };
  MoeWeights weights;
  MOEX_ASSIGN_OR_RETURN(weights.expert_format, ExpertFormatOf(spec, checkpoint, options));
  MOEX_ASSIGN_OR_RETURN(weights.router, get(names.router, {E, H}, 1.0f / std::sqrt(static_cast<float>(H))));
  if (spec.router.has_bias) {
    MOEX_ASSIGN_OR_RETURN(weights.router_bias, get(names.router_bias, {E}, 0.05f));
  }
  if (spec.router.has_correction_bias) {
    MOEX_ASSIGN_OR_RETURN(weights.correction_bias, get(names.correction_bias, {E}, 0.05f));
  }
  if (spec.hash_routed) {
    MOEX_ASSIGN_OR_RETURN(weights.token_table, LoadTokenTable(spec, names, checkpoint, seed));
  }
  StackedBiases biases;
  if (spec.mlp.biases && !experts.empty()) {
    if (names.layout != model::ExpertLayout::kFusedInterleaved) {
      return absl::UnimplementedError(StrCat("layer ", spec.layer, ": expert biases are read from gpt-oss's layout only"));
    }
    MOEX_ASSIGN_OR_RETURN(biases.gate_up, get(names.StackedBias("gate_up"), {E, 2 * F}, 0.05f));
    MOEX_ASSIGN_OR_RETURN(biases.down, get(names.StackedBias("down"), {E, H}, 0.05f));
  }
  for (int64_t e : experts) {
    if (e < 0 || e >= E) return absl::InvalidArgumentError(StrCat("expert ", e, " outside [0, ", E, ")"));
    if (weights.experts.count(e)) continue;
    const int64_t hits_before = r.tensors_from_cache;
    MOEX_ASSIGN_OR_RETURN(
        weights.experts[e],
        expert(
            spec.mlp, F, [&](std::string_view p) { return names.Expert(e, p); },
            [&](std::string_view p) { return StoredTensor(names, e, p); },
            [&](std::string_view p) -> absl::StatusOr<StoredMatrix> {
              absl::StatusOr<StoredMatrix> m = ReadProjection(*checkpoint, spec, names, e, p, options.map_checkpoint);
              if (m.ok() || m.status().code() != absl::StatusCode::kUnimplemented) return m;
              // A layout change the stored dtype does not allow (an FP8 stacked
              // tensor to transpose): say which tensor and what moex reads.
              return absl::UnimplementedError(StrCat(
                  "layer ", spec.layer, ", expert ", e, ": '", StoredTensor(names, e, p), "' (", spec.model_type,
                  "'s stacked layout): ", m.status().message(), "; moex reads this layout in F32, BF16 or F16",
                  names.layout == model::ExpertLayout::kFusedInterleaved ? " or as MXFP4 _blocks/_scales" : ""));
            }));
    if (weights.experts[e].format() != weights.expert_format) {
      return absl::InvalidArgumentError(StrCat("expert ", e, " of layer ", spec.layer, " is ",
                                               WeightFormatName(weights.experts[e].format()), ", expert 0 ",
                                               WeightFormatName(weights.expert_format),
                                               ": moex needs a layer's routed experts in one dtype"));
    }
    if (spec.mlp.biases) SliceBiases(biases, e, F, H, &weights.experts[e]);
    const int64_t matrices = spec.mlp.gated() ? 3 : 2;
    ++(r.tensors_from_cache - hits_before == matrices ? r.experts_from_cache : r.experts_loaded);
  }
  if (spec.shared_width > 0) {
    auto shared_name = [&](std::string_view p) { return names.Shared(p); };
    MOEX_ASSIGN_OR_RETURN(
        weights.shared,
        expert(spec.shared_mlp, spec.shared_width, shared_name, shared_name, [&](std::string_view p) {
          const bool down = p == "down";
          return checkpoint->ReadMatrix(names.Shared(p), down ? H : spec.shared_width, down ? spec.shared_width : H,
                                        options.map_checkpoint);
        }));
    if (spec.shared_expert_gate) {
      MOEX_ASSIGN_OR_RETURN(weights.shared_gate, get(names.shared_gate, {1, H}, 1.0f / std::sqrt(static_cast<float>(H))));
    }
  }
  return weights;
}

absl::Status SaveMoeWeights(const MoeLayerSpec& spec, const MoeWeights& weights,
                            const std::string& path, model::StorageDtype dtype) {
  const MoeWeightNames names = WeightNamesFor(spec);
  const int64_t E = spec.num_experts, F = spec.expert_width, H = spec.hidden;
  std::deque<Tensor> held;  // stable addresses
  std::vector<std::pair<std::string, const Tensor*>> named;
  auto add = [&](std::string name, const Tensor& t) { named.emplace_back(std::move(name), &t); };
  auto add_matrix = [&](std::string name, const StoredMatrix& m) {
    held.push_back(m.ToTensor());
    add(std::move(name), held.back());
  };
  add(names.router, weights.router);
  if (!weights.router_bias.values.empty()) add(names.router_bias, weights.router_bias);
  if (!weights.correction_bias.values.empty()) add(names.correction_bias, weights.correction_bias);
  if (names.layout == model::ExpertLayout::kPerExpert) {
    for (const auto& [e, w] : weights.experts) {
      if (spec.mlp.gated()) add_matrix(names.Expert(e, "gate"), w.gate);
      add_matrix(names.Expert(e, "up"), w.up);
      add_matrix(names.Expert(e, "down"), w.down);
    }
  } else {
    // Stacked layouts hold every expert in one tensor.
    if (static_cast<int64_t>(weights.experts.size()) != E) {
      return absl::InvalidArgumentError(StrCat("saving layer ", spec.layer, " in ", spec.model_type,
                                               "'s stacked layout needs all ", E, " experts; ",
                                               weights.experts.size(), " are held"));
    }
    const bool dbrx = names.layout == model::ExpertLayout::kDbrx;
    const bool interleaved = names.layout == model::ExpertLayout::kFusedInterleaved;
    // DBRX: w1, v1 [E*F, H] as held and w2 [E*F, H], down transposed.
    // Llama 4, gpt-oss: gate_up [E, H, 2F] and down [E, F, H], x . W.
    Tensor& gate_up = held.emplace_back(dbrx ? std::vector<int64_t>{E * F, H} : std::vector<int64_t>{E, H, 2 * F});
    Tensor& up_only = held.emplace_back(std::vector<int64_t>{dbrx ? E * F : 0, H});
    Tensor& down = held.emplace_back(dbrx ? std::vector<int64_t>{E * F, H} : std::vector<int64_t>{E, F, H});
    Tensor& gate_up_bias = held.emplace_back(std::vector<int64_t>{interleaved ? E : 0, 2 * F});
    Tensor& down_bias = held.emplace_back(std::vector<int64_t>{interleaved ? E : 0, H});
    for (const auto& [e, w] : weights.experts) {
      const Tensor g = w.gate.ToTensor(), u = w.up.ToTensor(), d = w.down.ToTensor();
      for (int64_t f = 0; f < F; ++f) {
        for (int64_t h = 0; h < H; ++h) {
          if (dbrx) {
            gate_up.values[(e * F + f) * H + h] = g.values[f * H + h];
            up_only.values[(e * F + f) * H + h] = u.values[f * H + h];
          } else {
            const int64_t gate_col = interleaved ? 2 * f : f, up_col = interleaved ? 2 * f + 1 : F + f;
            gate_up.values[(e * H + h) * 2 * F + gate_col] = g.values[f * H + h];
            gate_up.values[(e * H + h) * 2 * F + up_col] = u.values[f * H + h];
          }
          down.values[(e * F + f) * H + h] = d.values[h * F + f];
        }
      }
      if (interleaved && !w.up_bias.empty()) {
        for (int64_t f = 0; f < F; ++f) {
          gate_up_bias.values[e * 2 * F + 2 * f] = w.gate_bias[f];
          gate_up_bias.values[e * 2 * F + 2 * f + 1] = w.up_bias[f];
        }
        std::copy(w.down_bias.begin(), w.down_bias.end(), down_bias.values.begin() + e * H);
      }
    }
    add(names.Stacked(dbrx ? "w1" : "gate_up"), gate_up);
    if (dbrx) add(names.Stacked("v1"), up_only);
    add(names.Stacked(dbrx ? "w2" : "down"), down);
    if (interleaved && spec.mlp.biases) {
      add(names.StackedBias("gate_up"), gate_up_bias);
      add(names.StackedBias("down"), down_bias);
    }
  }
  if (weights.shared) {
    if (spec.shared_mlp.gated()) add_matrix(names.Shared("gate"), weights.shared->gate);
    add_matrix(names.Shared("up"), weights.shared->up);
    add_matrix(names.Shared("down"), weights.shared->down);
  }
  if (!weights.shared_gate.values.empty()) add(names.shared_gate, weights.shared_gate);
  std::vector<model::IntegerTensor> integers;
  if (spec.hash_routed) {
    integers.push_back({names.token_table, {spec.vocab_size, spec.top_k},
                        std::vector<int64_t>(weights.token_table.begin(), weights.token_table.end())});
  }
  return model::WriteSafetensors(path, named, dtype, integers);
}

}  // namespace moex::ep
