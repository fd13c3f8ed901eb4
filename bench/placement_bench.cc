// eplb against moex on synthetic skewed loads of DeepSeek-V3 and Kimi K2
// shape (or the shapes given), many seeds: max/mean per-GPU load, the lower
// bound, and the experts each plan moves from the placement made for the
// previous load.
//
//   moex_bench_placement [--seeds N] [--layers L] [--skew Z] [--drift D] [--json FILE]
//                        [--shape EXPERTS,SLOTS,GROUPS,NODES,GPUS]...
//
// --drift 0 plans the Zipf load itself.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/placement/policy.h"
#include "nlohmann/json.hpp"

namespace {

using moex::placement::EplbPlacement;
using moex::placement::Matrix;

struct Shape {
  std::string name;
  int64_t experts, replicas, groups, nodes, gpus;
};

// "EXPERTS,SLOTS,GROUPS,NODES,GPUS", named after its numbers.
bool ParseShape(const char* text, Shape* shape) {
  long long v[5];
  int used = 0;
  if (std::sscanf(text, "%lld,%lld,%lld,%lld,%lld%n", &v[0], &v[1], &v[2], &v[3], &v[4], &used) != 5 ||
      text[used] != '\0') {
    return false;
  }
  *shape = {"", v[0], v[1], v[2], v[3], v[4]};
  char name[160];
  std::snprintf(name, sizeof name, "%lld experts, %lld groups, +%lld slots, %lld nodes x %lld GPUs (%s)", v[0], v[2],
                v[1] - v[0], v[3], v[4], moex::placement::IsHierarchical(v[2], v[3]) ? "hierarchical" : "global");
  shape->name = name;
  return true;
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}
double Max(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, x);
  return m;
}
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  int seeds = 20, layers = 4;
  double skew = 1.0, drift = 0.5;
  std::string json_path;
  std::vector<Shape> shapes;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "moex_bench_placement: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--seeds")) seeds = std::atoi(next());
    else if (!std::strcmp(argv[i], "--layers")) layers = std::atoi(next());
    else if (!std::strcmp(argv[i], "--skew")) skew = std::atof(next());
    else if (!std::strcmp(argv[i], "--drift")) drift = std::atof(next());
    else if (!std::strcmp(argv[i], "--json")) json_path = next();
    else if (!std::strcmp(argv[i], "--shape")) {
      const char* text = next();
      if (!ParseShape(text, &shapes.emplace_back())) {
        std::fprintf(stderr, "moex_bench_placement: --shape '%s' is not EXPERTS,SLOTS,GROUPS,NODES,GPUS\n", text);
        return 2;
      }
    } else {
      std::fprintf(stderr, "moex_bench_placement: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (shapes.empty()) {
    shapes = {{"DeepSeek-V3 (256 experts, 8 groups, +32 slots, 4 nodes x 8 GPUs)", 256, 288, 8, 4, 32},
              {"Kimi K2 (384 experts, 1 group, +64 slots, 8 nodes x 8 GPUs)", 384, 448, 1, 8, 64}};
  }
  nlohmann::json out;
  out["seeds"] = seeds;
  out["layers"] = layers;
  out["skew"] = skew;
  out["drift"] = drift;
  std::printf("%d seeds x %d layers, Zipf skew %.2f; moves: from the moex placement of the load before a drift of +-%.0f%%\n",
              seeds, layers, skew, 100 * drift);
  std::printf("| shape | eplb max/mean (mean, median, worst) | moex max/mean (mean, median, worst) | lower bound (mean) | moex better on | "
              "moved: eplb | moved: moex from scratch | moved: moex with --current | plan ms eplb / moex / moex with --current |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Shape& s : shapes) {
    std::vector<double> eplb_imb, moex_imb, bound_imb, moves_eplb, moves_scratch, moves_aware, eplb_ms, moex_ms, aware_ms;
    int better = 0, cases = 0;
    for (int seed = 0; seed < seeds; ++seed) {
      auto input = [&](Matrix load, moex::placement::IndexMatrix current = {}) {
        return moex::placement::PlanInput{.load = std::move(load), .num_replicas = s.replicas, .num_groups = s.groups,
                                        .num_nodes = s.nodes, .num_gpus = s.gpus, .current = std::move(current)};
      };
      Matrix before = moex::placement::ZipfLoad(layers, s.experts, skew, 1000 + seed);
      Matrix load = moex::placement::Drift(before, drift, 5000 + seed);
      auto t0 = std::chrono::steady_clock::now();
      EplbPlacement eplb = *moex::placement::PlanPlacement("eplb", input(load));
      auto t1 = std::chrono::steady_clock::now();
      EplbPlacement moex = *moex::placement::PlanPlacement("refined", input(load));
      auto t2 = std::chrono::steady_clock::now();
      eplb_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      moex_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      moex::placement::IndexMatrix current = moex::placement::PlanPlacement("refined", input(before))->phy2log;
      auto t3 = std::chrono::steady_clock::now();
      EplbPlacement aware = *moex::placement::PlanPlacement("refined", input(load, current));
      aware_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t3).count());
      Matrix ge = moex::placement::GpuLoads(load, eplb, s.gpus), gm = moex::placement::GpuLoads(load, moex, s.gpus);
      std::vector<double> bound = moex::placement::LoadLowerBound(load, s.replicas, s.gpus);
      // With EPLB's structure a node's GPUs share its groups' load: the
      // heaviest node over its GPUs bounds the hottest GPU from below.
      if (moex::placement::IsHierarchical(s.groups, s.nodes)) {
        const int64_t per_node = s.replicas / s.nodes, gpn = s.gpus / s.nodes;
        for (int l = 0; l < layers; ++l) {
          std::vector<double> node(s.nodes, 0.0);
          for (int64_t slot = 0; slot < s.replicas; ++slot) {
            int64_t e = eplb.phy2log[l][slot];
            node[slot / per_node] += load[l][e] / static_cast<double>(eplb.logcnt[l][e]);
          }
          bound[l] = std::max(bound[l], Max(node) / static_cast<double>(gpn));
        }
      }
      for (int l = 0; l < layers; ++l) {
        double total = 0;
        for (double w : load[l]) total += w;
        eplb_imb.push_back(moex::placement::Imbalance(ge[l]));
        moex_imb.push_back(moex::placement::Imbalance(gm[l]));
        bound_imb.push_back(bound[l] * static_cast<double>(s.gpus) / total);
        better += moex_imb.back() < eplb_imb.back() - 1e-12;
        ++cases;
      }
      moves_eplb.push_back(static_cast<double>(moex::placement::CountMoves(current, eplb.phy2log, s.gpus)) / layers);
      moves_scratch.push_back(static_cast<double>(moex::placement::CountMoves(current, moex.phy2log, s.gpus)) / layers);
      moves_aware.push_back(static_cast<double>(moex::placement::CountMoves(current, aware.phy2log, s.gpus)) / layers);
    }
    std::printf("| %s | %.4f, %.4f, %.4f | %.4f, %.4f, %.4f | %.4f | %d of %d | %.1f | %.1f | %.1f | %.2f / %.2f / %.2f |\n",
                s.name.c_str(), Mean(eplb_imb), Median(eplb_imb), Max(eplb_imb), Mean(moex_imb), Median(moex_imb),
                Max(moex_imb), Mean(bound_imb), better, cases,
                Mean(moves_eplb), Mean(moves_scratch), Mean(moves_aware), Mean(eplb_ms), Mean(moex_ms), Mean(aware_ms));
    out["shapes"].push_back({{"shape", s.name}, {"experts", s.experts}, {"replicas", s.replicas}, {"groups", s.groups},
                             {"nodes", s.nodes}, {"gpus", s.gpus},
                             {"eplb_imbalance", eplb_imb}, {"moex_imbalance", moex_imb}, {"lower_bound", bound_imb},
                             {"moex_better_cases", better}, {"cases", cases},
                             {"moves_per_layer_eplb", moves_eplb}, {"moves_per_layer_moex_scratch", moves_scratch},
                             {"moves_per_layer_moex_current", moves_aware},
                             {"plan_ms_eplb", eplb_ms}, {"plan_ms_moex", moex_ms},
                             {"plan_ms_moex_current", aware_ms}});
  }
  std::printf("(moves are per layer, out of the shape's slots; lower bound: LoadLowerBound (the mean GPU load, the hottest\n"
              " expert over its most replicas, what the slots per GPU force) and with hierarchical balancing the heaviest\n"
              " node (EPLB's groups onto nodes) over its GPUs)\n");
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    out["provenance"] = moex::ProvenanceJson();
    f << out.dump(1) << "\n";
    if (!f) {
      std::fprintf(stderr, "moex_bench_placement: cannot write '%s'\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}
