// Writes the files the `moex run` tests read:
//   <dir>/input_bf16.safetensors   hidden_states [37, 64] bf16 (37 tokens do
//                                  not divide over 2, 3, 4 or 5 ranks)
//   <dir>/input_wrong.safetensors  hidden_states [10, 63]
//   <dir>/input_h128.safetensors   hidden_states [37, 128], no input_ids
//   <dir>/input_h128_ids.safetensors  the same with input_ids [37] (I64)
//   <dir>/sharded/                 the `tiny` preset's layer-0 weights as a
//                                  two-shard checkpoint with its index
//   <dir>/partial.safetensors      the same weights without expert 5
//   <dir>/fp8_nan_scale.safetensors  the same in FP8, expert 3's gate with a NaN block scale
//   <dir>/fp8_no_scale.safetensors   the same in FP8, expert 2's down without its scales
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include "moex/ep/moe_weights.h"
#include "moex/model/model_loader.h"
#include "moex/model/safetensors.h"
#include "moex/model/safetensors_writer.h"
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
  Tensor wide({37, 128});
  for (int64_t i = 0; i < wide.size(); ++i) wide.values[i] = ep::SeededUniform(4, "input", i);
  if (auto s = model::WriteSafetensors((dir / "input_h128.safetensors").string(), {{"hidden_states", &wide}});
      !s.ok()) return Fail(s);
  model::IntegerTensor ids{"input_ids", {37}, {}};
  for (int64_t t = 0; t < 37; ++t) ids.values.push_back(t * 7 % 128);
  if (auto s = model::WriteSafetensors((dir / "input_h128_ids.safetensors").string(), {{"hidden_states", &wide}},
                                       model::StorageDtype::kF32, {ids});
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

  // FP8 checkpoints of the same layer that are wrong: expert 3's gate with
  // a NaN block scale, and expert 2's down without its scales.
  for (const char* which : {"fp8_nan_scale", "fp8_no_scale"}) {
    std::vector<model::TensorDecl> decls = {{names.router, "F32", weights->router.shape}};
    std::vector<std::vector<std::byte>> bytes = {std::vector<std::byte>(
        reinterpret_cast<const std::byte*>(weights->router.data()),
        reinterpret_cast<const std::byte*>(weights->router.data()) + weights->router.size() * 4)};
    for (const auto& [e, w] : weights->experts) {
      for (const char* p : {"gate", "up", "down"}) {
        const StoredMatrix& m = std::string(p) == "gate" ? w.gate : std::string(p) == "up" ? w.up : w.down;
        absl::StatusOr<StoredMatrix> q = StoredMatrix::Quantize(m.ToTensor(), WeightFormat::kFP8Block);
        if (!q.ok()) return Fail(q.status());
        const std::string name = names.Expert(e, p);
        decls.push_back({name, "F8_E4M3", {q->rows, q->cols}});
        bytes.emplace_back(q->values, q->values + q->value_bytes());
        if (std::string(which) == "fp8_no_scale" && e == 2 && std::string(p) == "down") continue;
        std::vector<std::byte> scales(q->scales, q->scales + q->scale_bytes());
        if (std::string(which) == "fp8_nan_scale" && e == 3 && std::string(p) == "gate") {
          const float nan = std::nanf("");
          std::memcpy(scales.data(), &nan, 4);
        }
        decls.push_back({name + "_scale_inv", "F32", StoredMatrix::ScaleShape(WeightFormat::kFP8Block, q->rows, q->cols)});
        bytes.push_back(std::move(scales));
      }
    }
    absl::StatusOr<std::unique_ptr<model::SafetensorsWriter>> writer =
        model::SafetensorsWriter::Create((dir / (std::string(which) + ".safetensors")).string(), decls);
    if (!writer.ok()) return Fail(writer.status());
    for (size_t i = 0; i < decls.size(); ++i) {
      if (auto s = (*writer)->Append(decls[i].name, bytes[i].data(), static_cast<int64_t>(bytes[i].size())); !s.ok()) {
        return Fail(s);
      }
    }
    if (auto s = (*writer)->Finish(); !s.ok()) return Fail(s);
  }

  weights->experts.erase(5);
  if (auto s = ep::SaveMoeWeights(*spec, *weights, (dir / "partial.safetensors").string(),
                                  model::StorageDtype::kF32); !s.ok()) return Fail(s);
  return 0;
}
