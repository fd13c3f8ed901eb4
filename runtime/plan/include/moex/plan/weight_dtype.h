// How many bytes each parameter takes at a deployment dtype, part by part.
//
//   fp32, bf16: every weight at 4 or 2 bytes.
//   fp8:  the linear layers of attention, Mamba, dense MLPs and experts in
//         e4m3 with one fp32 scale per 128x128 block (DeepSeek-V3's format);
//         embedding, LM head, router, norms and vision stay bf16.
//   fp4:  routed and shared expert weights in MXFP4 (e2m1, one e8m0 scale per
//         32 values, as gpt-oss ships); everything else bf16.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/architecture.h"

namespace moex::plan {

enum class WeightDtype { kFp32, kBf16, kFp8, kFp4 };

absl::StatusOr<WeightDtype> ParseWeightDtype(std::string_view name);
std::string_view WeightDtypeName(WeightDtype dtype);

struct DtypeScheme {
  WeightDtype dtype = WeightDtype::kBf16;
  std::array<double, model::kNumParts> bytes_per_param{};
  std::vector<model::Part> quantised;  // parts stored below 16 bits
  std::string format;                  // e.g. "e4m3, fp32 scale per 128x128 block"
};

DtypeScheme SchemeFor(WeightDtype dtype);

}  // namespace moex::plan
