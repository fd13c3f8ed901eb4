#include "moex/plan/weight_dtype.h"

#include "absl/strings/str_join.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::plan {

using model::Part;

absl::StatusOr<WeightDtype> ParseWeightDtype(std::string_view name) {
  if (name == "fp32") return WeightDtype::kFp32;
  if (name == "bf16") return WeightDtype::kBf16;
  if (name == "fp16") return WeightDtype::kFp16;
  if (name == "fp8") return WeightDtype::kFp8;
  if (name == "fp4") return WeightDtype::kFp4;
  return absl::InvalidArgumentError(
      StrCat("--dtype '", name, "' is not one of fp32, bf16, fp16, fp8, fp4"));
}

std::string_view WeightDtypeName(WeightDtype dtype) {
  switch (dtype) {
    case WeightDtype::kFp32: return "fp32";
    case WeightDtype::kBf16: return "bf16";
    case WeightDtype::kFp16: return "fp16";
    case WeightDtype::kFp8: return "fp8";
    case WeightDtype::kFp4: return "fp4";
  }
  return "?";
}

namespace {

// DtypeFromConfig without the hint about --dtype on its errors.
absl::StatusOr<DtypeChoice> Declared(const model::ModelArch& arch) {
  const model::StoredDtype& stored = arch.stored;
  DtypeChoice choice;
  if (stored.quantized) {
    choice.source = "quantization_config";
    if (stored.quant_method.empty()) {
      return absl::InvalidArgumentError(StrCat(arch.source, ": field 'quantization_config.quant_method' is missing, ",
                                               "so moex cannot tell how the weights are stored"));
    }
    choice.detail = StrCat("quant_method ", stored.quant_method);
    if (stored.quant_method == "fp8") {
      choice.dtype = WeightDtype::kFp8;
      if (!stored.quant_format.empty()) StrAppend(&choice.detail, ", ", stored.quant_format);
      if (!stored.weight_block_size.empty()) {
        StrAppend(&choice.detail, ", ", absl::StrJoin(stored.weight_block_size, "x"), " blocks");
        if (stored.weight_block_size != std::vector<int64_t>{128, 128}) {
          choice.notes.push_back(StrCat("quantization_config.weight_block_size is [",
                                        absl::StrJoin(stored.weight_block_size, ", "),
                                        "]; the plan sizes fp8 scales per 128x128 block"));
        }
      }
    } else if (stored.quant_method == "mxfp4") {
      choice.dtype = WeightDtype::kFp4;
    } else {
      return absl::InvalidArgumentError(StrCat(arch.source, ": field 'quantization_config.quant_method' is '",
                                               stored.quant_method, "', which moex plan cannot size (it knows fp8 ",
                                               "and mxfp4)"));
    }
    return choice;
  }
  if (!stored.dtype_field.empty()) {
    choice.source = stored.dtype_field;
    choice.detail = stored.dtype;
    if (stored.dtype == "bfloat16") {
      choice.dtype = WeightDtype::kBf16;
    } else if (stored.dtype == "float16") {
      choice.dtype = WeightDtype::kFp16;
    } else if (stored.dtype == "float32") {
      choice.dtype = WeightDtype::kFp32;
    } else {
      return absl::InvalidArgumentError(StrCat(arch.source, ": field '", stored.dtype_field, "' is '", stored.dtype,
                                               "', which moex plan cannot size (it knows bfloat16, float16 and ",
                                               "float32)"));
    }
    return choice;
  }
  return choice;  // bf16, "default"
}

}  // namespace

absl::StatusOr<DtypeChoice> DtypeFromConfig(const model::ModelArch& arch) {
  absl::StatusOr<DtypeChoice> choice = Declared(arch);
  if (!choice.ok()) {
    return absl::Status(choice.status().code(),
                        StrCat(choice.status().message(), "; --dtype fp32|bf16|fp16|fp8|fp4 overrides it"));
  }
  return choice;
}

absl::StatusOr<DtypeChoice> ChooseDtype(std::string_view flag, const model::ModelArch& arch) {
  if (flag.empty()) return DtypeFromConfig(arch);
  DtypeChoice choice;
  MOEX_ASSIGN_OR_RETURN(choice.dtype, ParseWeightDtype(flag));
  choice.source = "--dtype";
  absl::StatusOr<DtypeChoice> declared = Declared(arch);
  if (declared.ok() && declared->source != "default" && declared->dtype != choice.dtype) {
    choice.notes.push_back(StrCat("the config declares ", WeightDtypeName(declared->dtype), " (", declared->source,
                                  ": ", declared->detail, "); --dtype ", flag, " replaces it"));
  } else if (!declared.ok()) {
    choice.notes.push_back(StrCat(declared.status().message(), "; --dtype ", flag, " is used instead"));
  }
  return choice;
}

DtypeScheme SchemeFor(WeightDtype dtype) {
  DtypeScheme scheme;
  scheme.dtype = dtype;
  double base = dtype == WeightDtype::kFp32 ? 4.0 : 2.0;
  scheme.bytes_per_param.fill(base);
  if (dtype == WeightDtype::kFp32) scheme.format = "fp32 throughout";
  if (dtype == WeightDtype::kBf16) scheme.format = "bf16 throughout";
  if (dtype == WeightDtype::kFp16) scheme.format = "fp16 throughout";
  if (dtype == WeightDtype::kFp8) {
    scheme.quantised = {Part::kAttention, Part::kMamba, Part::kDenseMlp, Part::kRoutedExperts,
                        Part::kSharedExperts};
    scheme.format = "e4m3 with one fp32 scale per 128x128 block; the rest bf16";
    for (Part part : scheme.quantised) {
      scheme.bytes_per_param[static_cast<int>(part)] = 1.0 + 4.0 / (128.0 * 128.0);
    }
  }
  if (dtype == WeightDtype::kFp4) {
    scheme.quantised = {Part::kRoutedExperts, Part::kSharedExperts};
    scheme.format = "MXFP4 (e2m1, one e8m0 scale per 32 values); the rest bf16";
    for (Part part : scheme.quantised) {
      scheme.bytes_per_param[static_cast<int>(part)] = 0.5 + 1.0 / 32.0;
    }
  }
  return scheme;
}

}  // namespace moex::plan
