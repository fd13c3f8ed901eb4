// Writes the files the `moex run` tests read:
//   <dir>/input_bf16.safetensors   hidden_states [37, 64] bf16 (37 tokens do
//                                  not divide over 2, 3, 4 or 5 ranks)
//   <dir>/input_wrong.safetensors  hidden_states [10, 63]
//   <dir>/sharded/                 the `tiny` preset's layer-0 weights as a
//                                  two-shard checkpoint with its index
//   <dir>/partial.safetensors      the same weights without expert 5
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>

#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "make_fixtures: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moex;
  if (argc != 2) return std::fprintf(stderr, "usage: make_fixtures DIR\n"), 2;
  std::filesystem::path dir(argv[1]);
  std::filesystem::create_directories(dir / "sharded");

  Tensor input({37, 64}), wrong({10, 63});
  for (int64_t i = 0; i < input.size(); ++i) input.values[i] = ep::SeededUniform(3, "input", i);
  for (int64_t i = 0; i < wrong.size(); ++i) wrong.values[i] = 0.5f;
  if (auto s = model::WriteSafetensors((dir / "input_bf16.safetensors").string(), {{"hidden_states", &input}},
                                       model::StorageDtype::kBF16); !s.ok()) return Fail(s);
  if (auto s = model::WriteSafetensors((dir / "input_wrong.safetensors").string(), {{"hidden_states", &wrong}});
      !s.ok()) return Fail(s);

  absl::StatusOr<model::ModelArch> arch = model::LoadModel("tiny");
  if (!arch.ok()) return Fail(arch.status());
  absl::StatusOr<ep::MoeLayerSpec> spec = ep::MoeLayerSpec::FromArch(*arch, 0);
  if (!spec.ok()) return Fail(spec.status());
  std::vector<int64_t> every;
  for (int64_t e = 0; e < spec->num_experts; ++e) every.push_back(e);
  absl::StatusOr<ep::MoeWeights> weights = ep::LoadMoeWeights(*spec, nullptr, 11, every);
  if (!weights.ok()) return Fail(weights.status());

  // Two shards: the router and experts 0-3 in one, experts 4-7 in the other.
  ep::MoeWeightNames names = ep::WeightNamesFor(*spec);
  std::vector<std::pair<std::string, const Tensor*>> shard[2];
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  std::deque<Tensor> held;  // the experts' values, at stable addresses
  auto put = [&](int which, const std::string& name, const Tensor& t) {
    shard[which].emplace_back(name, &t);
    index["weight_map"][name] = which == 0 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  };
  put(0, names.router, weights->router);
  for (const auto& [e, w] : weights->experts) {
    int which = e < 4 ? 0 : 1;
    put(which, names.Expert(e, "gate"), held.emplace_back(w.gate.ToTensor()));
    put(which, names.Expert(e, "up"), held.emplace_back(w.up.ToTensor()));
    put(which, names.Expert(e, "down"), held.emplace_back(w.down.ToTensor()));
  }
  for (int i = 0; i < 2; ++i) {
    std::string file = (dir / "sharded" / (i == 0 ? "model-00001-of-00002.safetensors"
                                                   : "model-00002-of-00002.safetensors")).string();
    if (auto s = model::WriteSafetensors(file, shard[i], model::StorageDtype::kBF16); !s.ok()) return Fail(s);
  }
  std::ofstream(dir / "sharded" / "model.safetensors.index.json") << index.dump(2);

  weights->experts.erase(5);
  if (auto s = ep::SaveMoeWeights(*spec, *weights, (dir / "partial.safetensors").string(),
                                  model::StorageDtype::kF32); !s.ok()) return Fail(s);
  return 0;
}
