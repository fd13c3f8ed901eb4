#include "moex/cli/checkpoint_synth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <regex>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/core/format.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_weights.h"
#include "moex/model/config_view.h"
#include "moex/model/model_loader.h"
#include "moex/model/moe_layer_spec.h"
#include "moex/model/presets.h"
#include "moex/model/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace moex::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kIndexName = "model.safetensors.index.json";

// One weight of a layer: how its values are made (the name and scale the
// random weights of `moex run` use) and how it is stored.
struct SynthWeight {
  std::string name;            // its ".weight" name: the seed's key
  std::vector<int64_t> shape;  // [rows, cols], or [n] for a bias
  float scale = 1.0f;          // of ep::SeededUniform's [-1, 1)
  WeightFormat format = WeightFormat::kF32;
  std::vector<StoredName> stored;
  int64_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  int64_t cols() const { return shape.back(); }
  int64_t bytes() const {
    return StoredMatrix::ValueBytes(format, rows(), cols()) + StoredMatrix::ScaleBytes(format, rows(), cols());
  }
};

struct Shard {
  std::string file;
  std::vector<const SynthWeight*> weights;
  int64_t bytes = 0;
};

// The layer's weights in the order they are written: router, correction
// bias, experts 0..E-1 (gate, up, down), shared expert, shared gate.
absl::StatusOr<std::vector<SynthWeight>> LayerWeights(const model::MoeLayerSpec& spec, WeightFormat format) {
  const model::MoeWeightNames names = model::WeightNamesFor(spec);
  if (names.layout != model::ExpertLayout::kPerExpert || spec.mlp.biases || spec.router.has_bias) {
    return absl::UnimplementedError(StrCat("moex checkpoint synth writes experts one tensor each, without biases; ",
                                           spec.model_type, " stores its experts stacked or with biases (not yet)"));
  }
  const int64_t H = spec.hidden, E = spec.num_experts;
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(H));
  const WeightFormat small = format == WeightFormat::kF32 ? WeightFormat::kF32 : WeightFormat::kBF16;
  std::vector<SynthWeight> weights;
  auto add = [&](std::string name, std::vector<int64_t> shape, float scale, WeightFormat f) -> absl::Status {
    SynthWeight w{std::move(name), std::move(shape), scale, f, {}};
    if (f == WeightFormat::kMXFP4 && w.cols() % kMxfp4BlockSize != 0) {
      return absl::InvalidArgumentError(StrCat("'", w.name, "' is ", ShapeString(w.shape), ": MXFP4 needs its ",
                                               w.cols(), " columns in blocks of ", kMxfp4BlockSize));
    }
    w.stored = StoredNamesFor(w.name, f, w.rows(), w.cols());
    if (w.shape.size() == 1) w.stored[0].shape = w.shape;
    weights.push_back(std::move(w));
    return absl::OkStatus();
  };
  auto expert = [&](auto name_of, int64_t width, bool gated) -> absl::Status {
    const float out_scale = 1.0f / std::sqrt(static_cast<float>(width));
    if (gated) MOEX_RETURN_IF_ERROR(add(name_of("gate"), {width, H}, in_scale, format));
    MOEX_RETURN_IF_ERROR(add(name_of("up"), {width, H}, in_scale, format));
    return add(name_of("down"), {H, width}, out_scale, format);
  };
  MOEX_RETURN_IF_ERROR(add(names.router, {E, H}, in_scale, small));
  if (spec.router.has_correction_bias) {
    MOEX_RETURN_IF_ERROR(add(names.correction_bias, {E}, 0.05f, WeightFormat::kF32));
  }
  for (int64_t e = 0; e < E; ++e) {
    MOEX_RETURN_IF_ERROR(
        expert([&](std::string_view p) { return names.Expert(e, p); }, spec.expert_width, spec.mlp.gated()));
  }
  if (spec.shared_width > 0) {
    MOEX_RETURN_IF_ERROR(
        expert([&](std::string_view p) { return names.Shared(p); }, spec.shared_width, spec.shared_mlp.gated()));
    if (spec.shared_expert_gate) MOEX_RETURN_IF_ERROR(add(names.shared_gate, {1, H}, in_scale, small));
  }
  return weights;
}

// The weight's values, quantised, as StoredMatrix::CopyBytes lays them out
// (values, then scales). Made 128 rows at a time on `threads` threads: the
// FP8 blocks are 128 rows high and MXFP4's lie within a row, so each slab
// quantises on its own to exactly what the whole matrix would.
absl::Status Generate(const SynthWeight& w, uint64_t seed, int threads, std::vector<std::byte>* out) {
  const int64_t rows = w.rows(), cols = w.cols();
  const int64_t value_bytes = StoredMatrix::ValueBytes(w.format, rows, cols);
  out->assign(static_cast<size_t>(w.bytes()), std::byte{0});
  const int64_t slabs = (rows + kFp8BlockSize - 1) / kFp8BlockSize;
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  absl::Status first_error;
  auto work = [&] {
    for (int64_t s = next++; s < slabs; s = next++) {
      const int64_t r0 = s * kFp8BlockSize, n = std::min(kFp8BlockSize, rows - r0);
      Tensor slab({n, cols});
      const int64_t base = r0 * cols;
      ep::SeededFill(seed, w.name, base, n * cols, w.scale, slab.data());
      absl::StatusOr<StoredMatrix> q = StoredMatrix::Quantize(slab, w.format);
      if (!q.ok()) {
        std::lock_guard<std::mutex> lock(mutex);
        if (first_error.ok()) first_error = absl::InternalError(StrCat("'", w.name, "': ", q.status().message()));
        return;
      }
      std::memcpy(out->data() + StoredMatrix::ValueBytes(w.format, r0, cols), q->values,
                  static_cast<size_t>(q->value_bytes()));
      if (q->scale_bytes() > 0) {
        std::memcpy(out->data() + value_bytes + StoredMatrix::ScaleBytes(w.format, r0, cols), q->scales,
                    static_cast<size_t>(q->scale_bytes()));
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(threads, slabs) - 1;
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < helpers; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return first_error;
}

// The config.json text behind `model` (a preset, a file, or a folder).
absl::StatusOr<nlohmann::json> ReadConfig(const std::string& model) {
  if (std::optional<model::Preset> preset = model::FindPreset(model)) {
    return model::ParseJsonText(preset->config_json, StrCat("preset '", model, "'"));
  }
  fs::path path(model);
  std::error_code error;
  if (fs::is_directory(path, error)) path /= "config.json";
  return model::ReadJsonFile(path.string());
}

// Makes `out` ready: created when missing; when it holds anything, refused
// unless `force`, and then only earlier shards (model-*-of-*.safetensors)
// are removed from it, the rest being overwritten or left alone.
absl::Status PrepareOut(const std::string& out, bool force) {
  std::error_code error;
  if (fs::exists(out, error)) {
    if (!fs::is_directory(out, error)) return absl::InvalidArgumentError(StrCat("--out '", out, "' is not a folder"));
    std::vector<fs::path> entries;
    for (const fs::directory_entry& entry : fs::directory_iterator(out, error)) entries.push_back(entry.path());
    if (error) return absl::PermissionDeniedError(StrCat("cannot list --out '", out, "': ", error.message()));
    if (!entries.empty() && !force) {
      return absl::AlreadyExistsError(StrCat("--out '", out, "' is not empty (", entries.size(), " entries, e.g. '",
                                             entries.front().filename().string(), "'); --force writes into it"));
    }
    static const std::regex kShard(R"(model-\d{5}-of-\d{5}\.safetensors)");
    for (const fs::path& path : entries) {
      if (!std::regex_match(path.filename().string(), kShard)) continue;
      if (!fs::remove(path, error)) {
        return absl::PermissionDeniedError(StrCat("cannot remove the earlier shard '", path.string(), "': ", error.message()));
      }
    }
    return absl::OkStatus();
  }
  if (!fs::create_directories(out, error)) {
    return absl::PermissionDeniedError(StrCat("cannot create --out '", out, "': ", error.message()));
  }
  return absl::OkStatus();
}

std::string Gb(double bytes) { return absl::StrFormat("%.2f GB", bytes / 1e9); }

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  return s >= 60 ? absl::StrFormat("%dm%02ds", s / 60, s % 60) : absl::StrFormat("%ds", s);
}

}  // namespace

std::vector<StoredName> StoredNamesFor(const std::string& name, WeightFormat format, int64_t rows, int64_t cols) {
  switch (format) {
    case WeightFormat::kF32: return {{name, "F32", {rows, cols}}};
    case WeightFormat::kBF16: return {{name, "BF16", {rows, cols}}};
    case WeightFormat::kF16: return {{name, "F16", {rows, cols}}};
    case WeightFormat::kFP8Block:
      return {{name, "F8_E4M3", {rows, cols}},
              {name + "_scale_inv", "F32", StoredMatrix::ScaleShape(format, rows, cols)}};
    case WeightFormat::kMXFP4: {
      std::string base = name;
      if (base.size() > 7 && base.compare(base.size() - 7, 7, ".weight") == 0) base.resize(base.size() - 7);
      const int64_t blocks = cols / kMxfp4BlockSize;
      return {{base + "_blocks", "U8", {rows, blocks, kMxfp4BlockSize / 2}}, {base + "_scales", "U8", {rows, blocks}}};
    }
  }
  return {};
}

absl::StatusOr<std::vector<int64_t>> ParseSynthLayers(std::string_view text, const model::ModelArch& arch) {
  std::vector<int64_t> layers;
  if (text.empty()) {
    MOEX_ASSIGN_OR_RETURN(model::MoeLayerSpec spec, model::MoeLayerSpec::FromArch(arch, std::nullopt));
    return std::vector<int64_t>{spec.layer};
  }
  const int64_t count = static_cast<int64_t>(arch.layers.size());
  for (absl::string_view item : absl::StrSplit(absl::string_view(text.data(), text.size()), ',')) {
    std::vector<absl::string_view> ends = absl::StrSplit(item, '-');
    int64_t first = -1, last = -1;
    if (ends.size() > 2 || !absl::SimpleAtoi(ends.front(), &first) || !absl::SimpleAtoi(ends.back(), &last) ||
        first < 0 || last < first) {
      return absl::InvalidArgumentError(StrCat("--layers '", text, "': '", std::string(item),
                                               "' is not a layer index or a range such as 3-5"));
    }
    if (last >= count) {
      return absl::InvalidArgumentError(
          StrCat("--layers '", text, "': layer ", last, " is outside the model's ", count, " layers [0, ", count, ")"));
    }
    for (int64_t layer = first; layer <= last; ++layer) {
      if (std::find(layers.begin(), layers.end(), layer) != layers.end()) {
        return absl::InvalidArgumentError(StrCat("--layers '", text, "' names layer ", layer, " twice"));
      }
      MOEX_RETURN_IF_ERROR(model::MoeLayerSpec::FromArch(arch, layer).status());
      layers.push_back(layer);
    }
  }
  return layers;
}

absl::StatusOr<SynthResult> SynthesizeCheckpoint(const SynthOptions& options, std::ostream* progress) {
  const Clock::time_point start = Clock::now();
  if (options.out.empty()) return absl::InvalidArgumentError("--out is required");
  MOEX_ASSIGN_OR_RETURN(WeightFormat format, ParseWeightFormat(options.dtype));
  if (format == WeightFormat::kF16) {
    return absl::InvalidArgumentError("--dtype f16 is not written; fp8, mxfp4, bf16 or f32 are");
  }
  if (!(options.shard_gib > 0)) {
    return absl::InvalidArgumentError(StrCat("--shard-gib ", options.shard_gib, " must be above 0"));
  }
  MOEX_ASSIGN_OR_RETURN(model::ModelArch arch, model::LoadModel(options.model));
  MOEX_ASSIGN_OR_RETURN(nlohmann::json config, ReadConfig(options.model));
  MOEX_ASSIGN_OR_RETURN(std::vector<int64_t> layers, ParseSynthLayers(options.layers, arch));

  // Every weight and its checkpoint tensors, before a byte is written.
  std::vector<SynthWeight> weights;
  for (int64_t layer : layers) {
    MOEX_ASSIGN_OR_RETURN(model::MoeLayerSpec spec, model::MoeLayerSpec::FromArch(arch, layer));
    MOEX_ASSIGN_OR_RETURN(std::vector<SynthWeight> of_layer, LayerWeights(spec, format));
    for (SynthWeight& w : of_layer) weights.push_back(std::move(w));
  }
  // Shards as Hugging Face cuts them: weights in order, a new shard when the
  // next would take this one past the limit; a weight is never split (an FP8
  // weight's scales stay in its shard), and one above the limit is alone.
  const double limit = options.shard_gib * kGiB;
  std::vector<Shard> shards;
  int64_t total_bytes = 0, total_tensors = 0;
  for (const SynthWeight& w : weights) {
    if (shards.empty() || (shards.back().bytes > 0 && static_cast<double>(shards.back().bytes + w.bytes()) > limit)) {
      shards.emplace_back();
    }
    shards.back().weights.push_back(&w);
    shards.back().bytes += w.bytes();
    total_bytes += w.bytes();
    total_tensors += static_cast<int64_t>(w.stored.size());
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    shards[i].file = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
  }

  MOEX_RETURN_IF_ERROR(PrepareOut(options.out, options.force));
  std::error_code error;
  const fs::space_info space = fs::space(options.out, error);
  if (!error && static_cast<double>(space.available) < static_cast<double>(total_bytes) * 1.01) {
    return absl::ResourceExhaustedError(StrCat("--out '", options.out, "': the checkpoint needs ", Gb(total_bytes),
                                               ", the file system has ", Gb(space.available), " free"));
  }
  const int threads = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  if (progress != nullptr) {
    *progress << absl::StrFormat("moex checkpoint synth: %d tensors, %s in %d shard%s, to %s (%s, layer%s %s, %d threads)\n",
                                 total_tensors, Gb(total_bytes), shards.size(), shards.size() == 1 ? "" : "s",
                                 options.out, WeightFormatName(format), layers.size() == 1 ? "" : "s",
                                 absl::StrJoin(layers, ","), threads)
              << std::flush;
  }

  SynthResult result;
  result.out = options.out;
  result.dtype = std::string(WeightFormatName(format));
  result.layers = layers;
  result.tensor_bytes = total_bytes;
  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<std::byte> bytes;
  int64_t bytes_done = 0;
  Clock::time_point last_line = Clock::now();
  for (const Shard& shard : shards) {
    std::vector<model::TensorDecl> decls;
    for (const SynthWeight* w : shard.weights) {
      for (const StoredName& s : w->stored) decls.push_back({s.name, s.dtype, s.shape});
    }
    const std::string path = (fs::path(options.out) / shard.file).string();
    MOEX_ASSIGN_OR_RETURN(std::unique_ptr<model::SafetensorsWriter> writer,
                          model::SafetensorsWriter::Create(path, std::move(decls), {{"format", "pt"}}));
    for (const SynthWeight* w : shard.weights) {
      MOEX_RETURN_IF_ERROR(Generate(*w, options.seed, threads, &bytes));
      // Values, then (FP8, MXFP4) scales: CopyBytes's order, the stored order.
      int64_t at = 0;
      for (size_t i = 0; i < w->stored.size(); ++i) {
        const int64_t n = i == 0 ? StoredMatrix::ValueBytes(w->format, w->rows(), w->cols())
                                 : StoredMatrix::ScaleBytes(w->format, w->rows(), w->cols());
        MOEX_RETURN_IF_ERROR(writer->Append(w->stored[i].name, bytes.data() + at, n));
        at += n;
        weight_map[w->stored[i].name] = shard.file;
        ++result.tensors;
      }
      bytes_done += w->bytes();
      const Clock::time_point now = Clock::now();
      if (progress != nullptr && std::chrono::duration<double>(now - last_line).count() >= options.progress_seconds) {
        last_line = now;
        const double seconds = std::chrono::duration<double>(now - start).count();
        const double rate = static_cast<double>(bytes_done) / std::max(seconds, 1e-9);
        *progress << absl::StrFormat(
                         "moex checkpoint synth: %d/%d tensors, %s of %s (%.0f%%), %.1f MB/s, %s left\n",
                         result.tensors, total_tensors, Gb(bytes_done), Gb(total_bytes),
                         100.0 * static_cast<double>(bytes_done) / static_cast<double>(std::max<int64_t>(total_bytes, 1)),
                         rate / 1e6, Duration(static_cast<double>(total_bytes - bytes_done) / std::max(rate, 1.0)))
                  << std::flush;
      }
    }
    MOEX_RETURN_IF_ERROR(writer->Finish());
    int64_t shard_tensors = 0;
    for (const SynthWeight* w : shard.weights) shard_tensors += static_cast<int64_t>(w->stored.size());
    result.shards.push_back({shard.file, writer->file_bytes(), shard_tensors});
    result.file_bytes += writer->file_bytes();
  }

  // config.json, its quantization_config saying what the shards hold; then
  // the index, last, since it is what opens the checkpoint.
  if (format == WeightFormat::kFP8Block) {
    config["quantization_config"] = {{"quant_method", "fp8"},
                                     {"fmt", "e4m3"},
                                     {"weight_block_size", {kFp8BlockSize, kFp8BlockSize}},
                                     {"activation_scheme", "dynamic"}};
  } else if (format == WeightFormat::kMXFP4) {
    config["quantization_config"] = {{"quant_method", "mxfp4"}};
  } else {
    config.erase("quantization_config");
  }
  MOEX_RETURN_IF_ERROR(model::WriteFileAtomically((fs::path(options.out) / "config.json").string(), config.dump(2) + "\n"));
  nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", std::move(weight_map)}};
  MOEX_RETURN_IF_ERROR(model::WriteFileAtomically((fs::path(options.out) / kIndexName).string(), index.dump(2) + "\n"));
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace moex::cli
