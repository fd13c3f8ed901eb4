#include "moex/model/model_loader.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>

#include "moex/core/str_cat.h"
#include "absl/strings/str_join.h"
#include "families/families.h"
#include "moex/core/status_macros.h"
#include "moex/model/config_view.h"
#include "moex/model/presets.h"

namespace moex::model {
namespace {

using Reader = std::function<absl::StatusOr<ModelArch>(const ConfigView&)>;

const std::map<std::string, Reader, std::less<>>& Readers() {
  using namespace families;  // NOLINT: the table below names every family reader
  static const auto* readers = new std::map<std::string, Reader, std::less<>>{
      {"deepseek_v2", [](const ConfigView& c) { return ReadDeepseek(c, "deepseek_v2"); }},
      {"deepseek_v3", [](const ConfigView& c) { return ReadDeepseek(c, "deepseek_v3"); }},
      {"kimi_k2", [](const ConfigView& c) { return ReadDeepseek(c, "kimi_k2"); }},
      {"deepseek_v4", [](const ConfigView& c) { return ReadDeepseekV4(c); }},
      {"qwen2_moe", [](const ConfigView& c) { return ReadQwenMoe(c, "qwen2_moe"); }},
      {"qwen3_moe", [](const ConfigView& c) { return ReadQwenMoe(c, "qwen3_moe"); }},
      {"qwen3_next", [](const ConfigView& c) { return ReadQwen3Next(c, "qwen3_next"); }},
      {"qwen3_5_moe", [](const ConfigView& c) { return ReadQwen3Next(c, "qwen3_5_moe"); }},
      {"mixtral", [](const ConfigView& c) { return ReadMixtral(c); }},
      {"llama4", [](const ConfigView& c) { return ReadLlama4(c, "llama4"); }},
      {"llama4_text", [](const ConfigView& c) { return ReadLlama4(c, "llama4_text"); }},
      {"gpt_oss", [](const ConfigView& c) { return ReadGptOss(c); }},
      {"olmoe", [](const ConfigView& c) { return ReadOlmoe(c); }},
      {"dbrx", [](const ConfigView& c) { return ReadDbrx(c); }},
      {"jamba", [](const ConfigView& c) { return ReadJamba(c); }},
      {"nemotron_h", [](const ConfigView& c) { return ReadNemotronH(c); }},
      {"llama", [](const ConfigView& c) { return ReadDense(c, "llama"); }},
      {"mistral", [](const ConfigView& c) { return ReadDense(c, "mistral"); }},
      {"qwen2", [](const ConfigView& c) { return ReadDense(c, "qwen2"); }},
      {"qwen3", [](const ConfigView& c) { return ReadDense(c, "qwen3"); }},
  };
  return *readers;
}

// The storage dtype the config declares, whatever the family. A field of the
// wrong type is an error; what the values mean is the planner's business.
absl::StatusOr<StoredDtype> ReadStoredDtype(const ConfigView& view) {
  StoredDtype stored;
  if (view.Has("quantization_config")) {
    MOEX_ASSIGN_OR_RETURN(ConfigView quant, view.Object("quantization_config"));
    stored.quantized = true;
    MOEX_ASSIGN_OR_RETURN(stored.quant_method, quant.StringOr("quant_method", ""));
    MOEX_ASSIGN_OR_RETURN(stored.quant_format, quant.StringOr("fmt", ""));
    MOEX_ASSIGN_OR_RETURN(stored.weight_block_size, quant.IntList("weight_block_size", 1, FieldLimits::kWidth));
  }
  MOEX_ASSIGN_OR_RETURN(stored.expert_dtype, view.StringOr("expert_dtype", ""));
  for (std::string_view field : {"torch_dtype", "dtype"}) {
    if (!view.Has(field)) continue;
    MOEX_ASSIGN_OR_RETURN(stored.dtype, view.String(field));
    stored.dtype_field = std::string(field);
    break;
  }
  return stored;
}

}  // namespace

std::vector<std::string> SupportedModelTypes() {
  std::vector<std::string> types;
  for (const auto& [type, reader] : Readers()) types.push_back(type);
  return types;
}

namespace {

// The experts' activation as the config names it, against what moex runs
// for the family: a mismatch (a gelu Mixtral, a Nemotron-H with latent
// experts) is refused by `moex run`, never run as something else.
absl::Status CheckExpertMathFields(const ConfigView& view, ModelArch* arch) {
  ConfigView text = view;
  if (view.Has("text_config")) {
    MOEX_ASSIGN_OR_RETURN(text, view.Object("text_config"));
  }
  auto expect = [&](const ConfigView& at, std::string_view key, std::string_view want) -> absl::Status {
    if (!at.Has(key)) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(std::string got, at.String(key));
    if (got != want) {
      arch->run_unsupported.push_back(StrCat(at.Where(key), " = '", got, "' (moex runs ", arch->model_type,
                                             "'s experts with ", want, ")"));
    }
    return absl::OkStatus();
  };
  if (arch->model_type == "gpt_oss") return absl::OkStatus();  // its activation is fixed, not a field
  if (arch->model_type == "nemotron_h") {
    MOEX_RETURN_IF_ERROR(expect(text, "mlp_hidden_act", "relu2"));
    if (text.Has("moe_latent_size")) {
      arch->run_unsupported.push_back(StrCat(text.Where("moe_latent_size"),
                                             ": latent experts (fc1/fc2_latent_proj) are not implemented"));
    }
    return absl::OkStatus();
  }
  if (arch->model_type == "dbrx") {
    if (!view.Has("ffn_config")) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(ConfigView ffn, view.Object("ffn_config"));
    if (!ffn.Has("ffn_act_fn")) return absl::OkStatus();
    MOEX_ASSIGN_OR_RETURN(ConfigView act, ffn.Object("ffn_act_fn"));
    return expect(act, "name", "silu");
  }
  return expect(text, "hidden_act", "silu");
}

}  // namespace

absl::StatusOr<ModelArch> ParseModelConfig(const nlohmann::json& config, std::string_view source) {
  ConfigView view(config, std::string(source));
  MOEX_ASSIGN_OR_RETURN(std::string model_type, view.String("model_type"));
  auto it = Readers().find(model_type);
  if (it == Readers().end()) {
    return absl::InvalidArgumentError(
        StrCat(source, ": unknown model_type '", model_type,
                     "'; moex reads: ", absl::StrJoin(SupportedModelTypes(), ", ")));
  }
  MOEX_ASSIGN_OR_RETURN(ModelArch arch, it->second(view));
  MOEX_ASSIGN_OR_RETURN(arch.stored, ReadStoredDtype(view));
  if (arch.num_moe_layers() > 0) {
    MOEX_RETURN_IF_ERROR(CheckExpertMathFields(view, &arch));
  }
  arch.source = std::string(source);
  return arch;
}

absl::StatusOr<ModelArch> LoadModel(std::string_view model) {
  if (model.empty()) return absl::InvalidArgumentError("no model given: name a preset or a config.json");
  if (std::optional<Preset> preset = FindPreset(model)) {
    MOEX_ASSIGN_OR_RETURN(nlohmann::json config,
                          ParseJsonText(preset->config_json, StrCat("preset '", model, "'")));
    return ParseModelConfig(config, preset->name);
  }
  std::filesystem::path path{std::string(model)};
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) path /= "config.json";
  if (!std::filesystem::exists(path, error)) {
    std::vector<std::string> names;
    for (const Preset& p : AllPresets()) names.emplace_back(p.name);
    return absl::NotFoundError(StrCat("'", model,
                                            "' is neither a preset nor a readable file; presets: ",
                                            absl::StrJoin(names, ", ")));
  }
  MOEX_ASSIGN_OR_RETURN(nlohmann::json config, ReadJsonFile(path.string()));
  return ParseModelConfig(config, path.string());
}

}  // namespace moex::model
