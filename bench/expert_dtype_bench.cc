// Expert compute from weights kept in their stored dtype, side by side in
// one process: one expert's gated FFN (moex/kernels/expert_ffn.h) over the
// same tokens and the same values held as FP8 (128x128 block scales), MXFP4,
// BF16 and F32, repetitions interleaved so that the machine's noise falls on
// every format alike. The baseline for FP8's dequantisation overhead is BF16
// (also turned into fp32 a tile at a time: the target is FP8 within
// 1.3x of it); F32 (no conversion, the GEMM straight from the weights) shows
// what conversion costs at all. One thread (as a rank bound to one core).
//
//   moex_bench_expert_dtype [--hidden 7168] [--width 2048] [--tokens 16]
//       [--reps 15] [--checkpoint DIR --experts N] [--json FILE]
//
// With --checkpoint (a synthesised or real checkpoint in the page cache),
// also the load of N experts: mapped and every page touched (what a rank
// does before its first step) against a plain pread of the same bytes into
// memory, interleaved, medians of --reps.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/bench/bench.h"
#include "moex/core/stored_matrix.h"
#include "moex/ep/moe_weights.h"
#include "moex/kernels/expert_ffn.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using moex::StoredMatrix;
using moex::Tensor;
using moex::WeightFormat;

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

int Fail(const std::string& what) {
  std::fprintf(stderr, "moex_bench_expert_dtype: %s\n", what.c_str());
  return 1;
}

nlohmann::json StatJson(const moex::bench::Stat& s) {
  return {{"median", s.median}, {"p10", s.p10}, {"p90", s.p90}, {"min", s.min}, {"max", s.max}};
}

struct Expert {
  StoredMatrix gate, up, down;
};

// Touches one byte a page of `m`'s bytes; returns their sum so that the
// reads are not optimised away.
uint64_t Touch(const StoredMatrix& m) {
  uint64_t sum = 0;
  const int64_t page = sysconf(_SC_PAGESIZE);
  for (int64_t i = 0; i < m.value_bytes(); i += page) sum += static_cast<uint8_t>(m.values[i]);
  for (int64_t i = 0; i < m.scale_bytes(); i += page) sum += static_cast<uint8_t>(m.scales[i]);
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  int64_t hidden = 7168, width = 2048, tokens = 16, reps = 15, experts = 16;
  std::string json_path, checkpoint_dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--hidden") hidden = std::stoll(next());
    else if (arg == "--width") width = std::stoll(next());
    else if (arg == "--tokens") tokens = std::stoll(next());
    else if (arg == "--reps") reps = std::stoll(next());
    else if (arg == "--experts") experts = std::stoll(next());
    else if (arg == "--checkpoint") checkpoint_dir = next();
    else if (arg == "--json") json_path = next();
    else return Fail("unknown argument '" + arg + "'");
  }
  if (hidden <= 0 || width <= 0 || tokens <= 0 || reps < 3 || hidden % 32 || width % 32) {
    return Fail("--hidden and --width must be positive multiples of 32, --tokens positive, --reps at least 3");
  }
  moex::kernels::SetBlasThreads(1);
  const WeightFormat formats[] = {WeightFormat::kFP8Block, WeightFormat::kMXFP4, WeightFormat::kBF16, WeightFormat::kF32};
  std::vector<Expert> held;
  for (WeightFormat format : formats) {
    Expert e;
    auto make = [&](const char* name, int64_t rows, int64_t cols, float scale) {
      Tensor t({rows, cols});
      for (int64_t i = 0; i < t.size(); ++i) t.values[i] = moex::ep::SeededUniform(5, name, i) * scale;
      return *StoredMatrix::Quantize(t, format);
    };
    e.gate = make("gate", width, hidden, 1.0f / std::sqrt(static_cast<float>(hidden)));
    e.up = make("up", width, hidden, 1.0f / std::sqrt(static_cast<float>(hidden)));
    e.down = make("down", hidden, width, 1.0f / std::sqrt(static_cast<float>(width)));
    held.push_back(std::move(e));
  }
  std::vector<float> x(tokens * hidden), y(tokens * hidden),
      workspace(moex::kernels::ExpertFfnWorkspace(tokens, width, hidden));
  for (int64_t i = 0; i < tokens * hidden; ++i) x[i] = moex::ep::SeededUniform(6, "x", i);
  std::vector<std::vector<double>> times(std::size(formats));
  std::fprintf(stderr, "expert %lldx%lld, %lld tokens, %lld reps interleaved over 4 formats (1 BLAS thread)\n",
               static_cast<long long>(width), static_cast<long long>(hidden), static_cast<long long>(tokens),
               static_cast<long long>(reps));
  for (int64_t rep = -1; rep < reps; ++rep) {  // rep -1: warm-up
    for (size_t f = 0; f < std::size(formats); ++f) {
      const Expert& e = held[f];
      const moex::kernels::ExpertWeightsView view{.gate = &e.gate, .up = &e.up, .down = &e.down, .hidden = hidden,
                                                  .width = width, .mlp = {}};
      const auto start = Clock::now();
      moex::kernels::ExpertFfn(view, x.data(), tokens, workspace.data(), y.data());
      if (rep >= 0) times[f].push_back(Seconds(start) * 1e6);
    }
    if (rep >= 0 && (rep + 1) % 5 == 0) std::fprintf(stderr, "  %lld/%lld reps\n", static_cast<long long>(rep + 1), static_cast<long long>(reps));
  }
  nlohmann::json out = {{"hidden", hidden}, {"width", width}, {"tokens", tokens}, {"reps", reps}, {"blas_threads", 1},
                        {"statistic", "median of reps, microseconds, p10-p90 spread"}};
  const moex::bench::Stat bf16 = moex::bench::Summarize(times[2]);
  std::printf("%-6s %12s %12s %12s %10s %14s\n", "dtype", "median us", "p10 us", "p90 us", "vs bf16", "weight bytes");
  for (size_t f = 0; f < std::size(formats); ++f) {
    const moex::bench::Stat s = moex::bench::Summarize(times[f]);
    const int64_t bytes = held[f].gate.bytes() + held[f].up.bytes() + held[f].down.bytes();
    std::printf("%-6s %12.0f %12.0f %12.0f %9.2fx %14lld\n", std::string(moex::WeightFormatName(formats[f])).c_str(),
                s.median, s.p10, s.p90, s.median / bf16.median, static_cast<long long>(bytes));
    out["formats"][std::string(moex::WeightFormatName(formats[f]))] = {
        {"us", StatJson(s)}, {"ratio_of_medians_vs_bf16", s.median / bf16.median}, {"weight_bytes", bytes}};
  }

  if (!checkpoint_dir.empty()) {
    absl::StatusOr<moex::model::ModelArch> arch = moex::model::LoadModel(checkpoint_dir);
    if (!arch.ok()) return Fail(std::string(arch.status().message()));
    absl::StatusOr<moex::model::MoeLayerSpec> spec = moex::model::MoeLayerSpec::FromArch(*arch, std::nullopt);
    absl::StatusOr<moex::model::Checkpoint> checkpoint = moex::model::Checkpoint::Open(checkpoint_dir);
    if (!spec.ok() || !checkpoint.ok()) return Fail(std::string((spec.ok() ? checkpoint.status() : spec.status()).message()));
    const moex::model::MoeWeightNames names = moex::model::WeightNamesFor(*spec);
    std::vector<std::string> tensors;
    for (int64_t e = 0; e < std::min(experts, spec->num_experts); ++e) {
      for (const char* p : {"gate", "up", "down"}) {
        for (const std::string& t : checkpoint->MatrixTensors(names.Expert(e, p))) tensors.push_back(t);
      }
    }
    std::vector<double> mapped_us, read_us;
    int64_t bytes = 0;
    uint64_t sum = 0;
    std::vector<char> buffer;
    for (int64_t rep = -1; rep < reps; ++rep) {
      auto start = Clock::now();
      for (int64_t e = 0; e < std::min(experts, spec->num_experts); ++e) {
        for (const char* p : {"gate", "up", "down"}) {
          const bool down = std::string(p) == "down";
          absl::StatusOr<StoredMatrix> m = checkpoint->ReadMatrix(names.Expert(e, p), down ? spec->hidden : spec->expert_width,
                                                                  down ? spec->expert_width : spec->hidden, /*map=*/true);
          if (!m.ok()) return Fail(std::string(m.status().message()));
          sum += Touch(*m);
        }
      }
      if (rep >= 0) mapped_us.push_back(Seconds(start) * 1e6);
      start = Clock::now();
      bytes = 0;
      for (const std::string& t : tensors) {
        const moex::model::TensorInfo info = *checkpoint->Info(t);
        const int64_t n = info.end - info.begin;
        if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(n);
        const int fd = open(info.file.c_str(), O_RDONLY | O_CLOEXEC);
        int64_t done = 0;
        while (fd >= 0 && done < n) {
          const ssize_t got = pread(fd, buffer.data() + done, n - done, info.begin + done);
          if (got <= 0) break;
          done += got;
        }
        if (fd >= 0) close(fd);
        sum += static_cast<uint8_t>(buffer[0]);
        bytes += n;
      }
      if (rep >= 0) read_us.push_back(Seconds(start) * 1e6);
    }
    const moex::bench::Stat mapped = moex::bench::Summarize(mapped_us), read = moex::bench::Summarize(read_us);
    std::printf("load of %lld experts (%.1f MB) from the page cache: mapped+touched %.0f us (p10 %.0f, p90 %.0f), "
                "pread %.0f us (p10 %.0f, p90 %.0f): %.3fx of a plain read [checksum %llu]\n",
                static_cast<long long>(std::min(experts, spec->num_experts)), bytes / 1e6, mapped.median, mapped.p10,
                mapped.p90, read.median, read.p10, read.p90, mapped.median / read.median,
                static_cast<unsigned long long>(sum % 1000));
    out["load"] = {{"experts", std::min(experts, spec->num_experts)}, {"bytes", bytes}, {"mapped_touched_us", StatJson(mapped)},
                   {"pread_us", StatJson(read)}, {"ratio_of_medians", mapped.median / read.median}};
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) return Fail("cannot write " + json_path);
    out["provenance"] = moex::ProvenanceJson();
    std::fprintf(f, "%s\n", out.dump(2).c_str());
    std::fclose(f);
  }
  return 0;
}
