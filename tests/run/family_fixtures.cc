// One small model of each family moex runs, written as its Hugging Face
// release would be (config.json field names, checkpoint tensor names and
// layouts, MXFP4 blocks for gpt-oss), and the MoE layer's output computed
// here from the family's formulas in double precision: the reference that
// `moex run --output` is checked against. Nothing here calls moex's router,
// MLP kernels or weight loader; the formulas are written out from each
// family's transformers modeling code.
//
//   family_fixtures write <family> <dir>    config.json, model.safetensors, input.safetensors,
//                                           layer (the MoE layer to run)
//   family_fixtures check <family> <dir> <output.safetensors>...
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "family_models.h"
#include "moex/model/safetensors.h"
#include "moex/model/safetensors_writer.h"

namespace {

using moex::testing::Family;
using moex::testing::FamilyModel;
using moex::testing::StoredTensor;

int Fail(const std::string& what) {
  std::fprintf(stderr, "family_fixtures: %s\n", what.c_str());
  return 1;
}

absl::Status WriteTensors(const std::string& path, const std::map<std::string, StoredTensor>& tensors) {
  std::vector<moex::model::TensorDecl> decls;
  for (const auto& [name, t] : tensors) decls.push_back({name, t.dtype, t.shape});
  auto writer = moex::model::SafetensorsWriter::Create(path, decls);
  if (!writer.ok()) return writer.status();
  for (const auto& [name, t] : tensors) {
    absl::Status appended = t.dtype == "F32" ? (*writer)->Append(name, t.f32.data(), t.f32.size() * 4)
                                             : (*writer)->Append(name, t.u8.data(), t.u8.size());
    if (!appended.ok()) return appended;
  }
  return (*writer)->Finish();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return Fail("usage: family_fixtures write|check <family> <dir> [output.safetensors...]");
  const std::string mode = argv[1], name = argv[2];
  const std::filesystem::path dir = argv[3];
  const Family* family = moex::testing::FindFamily(name);
  if (family == nullptr) return Fail("unknown family '" + name + "'");
  const FamilyModel model = family->make();
  if (mode == "write") {
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << model.config.dump(2);
    if (absl::Status s = WriteTensors((dir / "model.safetensors").string(), model.tensors); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    std::map<std::string, StoredTensor> input = {
        {"hidden_states", {"F32", {model.tokens, model.hidden}, model.x, {}}}};
    if (!model.input_ids.empty()) {
      std::vector<uint8_t> bytes(model.input_ids.size() * 8);
      std::memcpy(bytes.data(), model.input_ids.data(), bytes.size());
      input["input_ids"] = {"I64", {model.tokens}, {}, std::move(bytes)};
    }
    std::ofstream(dir / "layer") << model.layer << "\n";
    if (absl::Status s = WriteTensors((dir / "input.safetensors").string(), input); !s.ok()) {
      return Fail(std::string(s.message()));
    }
    std::printf("%s: layer %lld, %lld tokens, hidden %lld\n", name.c_str(), static_cast<long long>(model.layer),
                static_cast<long long>(model.tokens), static_cast<long long>(model.hidden));
    return 0;
  }
  if (mode != "check" || argc < 5) return Fail("usage: family_fixtures check <family> <dir> <output.safetensors>...");
  const std::vector<double> expected = family->reference(model);
  double scale = 0;
  for (double v : expected) scale = std::max(scale, std::fabs(v));
  int failures = 0;
  for (int i = 4; i < argc; ++i) {
    auto file = moex::model::Checkpoint::Open(argv[i]);
    if (!file.ok()) return Fail(std::string(file.status().message()));
    auto out = file->Read("output", {model.tokens, model.hidden});
    if (!out.ok()) return Fail(std::string(out.status().message()));
    double worst = 0;
    int64_t at = 0;
    for (size_t j = 0; j < expected.size(); ++j) {
      const double error = std::fabs(out->values[j] - expected[j]);
      if (!(error <= worst)) {
        worst = error;
        at = static_cast<int64_t>(j);
      }
    }
    const double relative = worst / std::max(scale, 1e-30);
    const bool ok = relative < 1e-4;
    std::printf("%s %s: max |moex - reference| = %.3g (%.3g of max |y| %.3g, token %lld) %s\n", name.c_str(), argv[i],
                worst, relative, scale, static_cast<long long>(at / model.hidden), ok ? "PASS" : "FAIL");
    failures += ok ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
