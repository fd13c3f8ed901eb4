// What a relaunched rank pays to get its experts back, measured in one
// process so that the machine's noise falls on every variant alike: each
// repetition loads the same experts from a bf16 checkpoint (in the page
// cache, as on a host that just wrote or read it), from the seed, and from
// the host weight cache that a relaunch reads back (every tensor a hit),
// interleaved. Medians, bandwidth and the ratios against both baselines.
//
//   moex_bench_weight_cache [--model qwen3-30b-a3b] [--experts N] [--reps 5]
//       [--checkpoint-dir /tmp] [--cache-root /dev/shm] [--json FILE]
//
// A cold checkpoint (on network storage, or a host whose page cache was
// dropped) is slower than the page-cache baseline here; bench/weight_reload.sh
// times that case across whole `moex run` launches.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/ep/moe_weights.h"
#include "moex/ep/weight_cache.h"
#include "moex/model/model_loader.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "moex_bench_weight_cache: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  std::string model = "qwen3-30b-a3b", checkpoint_dir = "/tmp", cache_root = "/dev/shm", json_path;
  int64_t experts = 0;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") model = value;
    else if (flag == "--experts") experts = std::atoll(value.c_str());
    else if (flag == "--reps") reps = std::max(1, std::atoi(value.c_str()));
    else if (flag == "--checkpoint-dir") checkpoint_dir = value;
    else if (flag == "--cache-root") cache_root = value;
    else if (flag == "--json") json_path = value;
    else return Fail("unknown flag " + flag);
  }
  absl::StatusOr<moex::model::ModelArch> arch = moex::model::LoadModel(model);
  if (!arch.ok()) return Fail(std::string(arch.status().message()));
  absl::StatusOr<moex::ep::MoeLayerSpec> spec = moex::ep::MoeLayerSpec::FromArch(*arch, std::nullopt);
  if (!spec.ok()) return Fail(std::string(spec.status().message()));
  if (experts <= 0 || experts > spec->num_experts) experts = spec->num_experts;
  std::vector<int64_t> mine;
  for (int64_t e = 0; e < experts; ++e) mine.push_back(e);
  const double bytes = static_cast<double>(experts) * 3 * spec->hidden * spec->expert_width * sizeof(float);

  const std::string tag = std::to_string(getpid());
  const std::string checkpoint_path = checkpoint_dir + "/moex-bench-weights-" + tag + ".safetensors";
  const std::string cache_dir = cache_root + "/moex-bench-weight-cache-" + tag;
  struct Cleanup {
    std::string a, b;
    ~Cleanup() {
      std::error_code ignored;
      std::filesystem::remove(a, ignored);
      std::filesystem::remove_all(b, ignored);
    }
  } cleanup{checkpoint_path, cache_dir};

  std::fprintf(stderr, "moex_bench_weight_cache: %s layer %lld, %lld experts (%.2f GiB fp32): writing a bf16 checkpoint\n",
               model.c_str(), static_cast<long long>(spec->layer), static_cast<long long>(experts), bytes / (1 << 30));
  {
    absl::StatusOr<moex::ep::MoeWeights> all = moex::ep::LoadMoeWeights(*spec, nullptr, 1, mine);
    if (!all.ok()) return Fail(std::string(all.status().message()));
    absl::Status saved = moex::ep::SaveMoeWeights(*spec, *all, checkpoint_path, moex::model::StorageDtype::kBF16);
    if (!saved.ok()) return Fail(std::string(saved.message()));
  }
  absl::StatusOr<moex::model::Checkpoint> checkpoint = moex::model::Checkpoint::Open(checkpoint_path);
  if (!checkpoint.ok()) return Fail(std::string(checkpoint.status().message()));
  absl::StatusOr<moex::ep::WeightCache> cache = moex::ep::WeightCache::Open(cache_dir);
  if (!cache.ok()) return Fail(std::string(cache.status().message()));
  {  // fill the cache, as the first attempt does
    moex::ep::WeightLoadReport report;
    absl::StatusOr<moex::ep::MoeWeights> filled = moex::ep::LoadMoeWeights(*spec, &*checkpoint, 1, mine, &*cache, &report);
    if (!filled.ok()) return Fail(std::string(filled.status().message()));
    if (!report.put_error.empty()) return Fail("cannot fill the cache: " + report.put_error);
  }

  std::vector<double> from_checkpoint, from_seed, from_cache;
  for (int r = 0; r < reps; ++r) {
    auto time = [&](auto load) {
      const auto start = Clock::now();
      load();
      return std::chrono::duration<double>(Clock::now() - start).count();
    };
    from_checkpoint.push_back(time([&] { (void)moex::ep::LoadMoeWeights(*spec, &*checkpoint, 1, mine); }));
    from_seed.push_back(time([&] { (void)moex::ep::LoadMoeWeights(*spec, nullptr, 1, mine); }));
    moex::ep::WeightLoadReport report;
    from_cache.push_back(time([&] { (void)moex::ep::LoadMoeWeights(*spec, &*checkpoint, 1, mine, &*cache, &report); }));
    if (report.experts_from_cache != experts) {
      return Fail("the cache did not hold every expert: " + std::to_string(report.experts_from_cache));
    }
    std::fprintf(stderr, "moex_bench_weight_cache: rep %d/%d: checkpoint %.3f s, seed %.3f s, cache %.3f s\n", r + 1, reps,
                 from_checkpoint.back(), from_seed.back(), from_cache.back());
  }
  const double checkpoint_s = Median(from_checkpoint), seed_s = Median(from_seed), cache_s = Median(from_cache);
  nlohmann::json j = {{"model", model},
                      {"layer", spec->layer},
                      {"experts", experts},
                      {"fp32_bytes", bytes},
                      {"reps", reps},
                      {"median_seconds", {{"bf16_checkpoint_page_cache", checkpoint_s}, {"seed", seed_s}, {"weight_cache", cache_s}}},
                      {"gb_per_s", {{"bf16_checkpoint_page_cache", bytes / checkpoint_s / 1e9}, {"seed", bytes / seed_s / 1e9},
                                    {"weight_cache", bytes / cache_s / 1e9}}},
                      {"speedup_vs_checkpoint", checkpoint_s / cache_s},
                      {"speedup_vs_seed", seed_s / cache_s},
                      {"samples", {{"bf16_checkpoint_page_cache", from_checkpoint}, {"seed", from_seed}, {"weight_cache", from_cache}}}};
  std::printf("weight cache read-back of %lld experts (%.2f GiB fp32), median of %d: %.3f s (%.2f GB/s); bf16 checkpoint "
              "in the page cache %.3f s -> %.2fx; seed %.3f s -> %.2fx\n",
              static_cast<long long>(experts), bytes / (1 << 30), reps, cache_s, bytes / cache_s / 1e9, checkpoint_s,
              checkpoint_s / cache_s, seed_s, seed_s / cache_s);
  j["provenance"] = moex::ProvenanceJson();
  if (!json_path.empty()) std::ofstream(json_path) << j.dump(2) << "\n";
  return 0;
}
