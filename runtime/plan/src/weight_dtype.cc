#include "moex/plan/weight_dtype.h"

#include "moex/core/str_cat.h"

namespace moex::plan {

using model::Part;

absl::StatusOr<WeightDtype> ParseWeightDtype(std::string_view name) {
  if (name == "fp32") return WeightDtype::kFp32;
  if (name == "bf16") return WeightDtype::kBf16;
  if (name == "fp8") return WeightDtype::kFp8;
  if (name == "fp4") return WeightDtype::kFp4;
  return absl::InvalidArgumentError(
      StrCat("--dtype '", name, "' is not one of fp32, bf16, fp8, fp4"));
}

std::string_view WeightDtypeName(WeightDtype dtype) {
  switch (dtype) {
    case WeightDtype::kFp32: return "fp32";
    case WeightDtype::kBf16: return "bf16";
    case WeightDtype::kFp8: return "fp8";
    case WeightDtype::kFp4: return "fp4";
  }
  return "?";
}

DtypeScheme SchemeFor(WeightDtype dtype) {
  DtypeScheme scheme;
  scheme.dtype = dtype;
  double base = dtype == WeightDtype::kFp32 ? 4.0 : 2.0;
  scheme.bytes_per_param.fill(base);
  if (dtype == WeightDtype::kFp32) scheme.format = "fp32 throughout";
  if (dtype == WeightDtype::kBf16) scheme.format = "bf16 throughout";
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
