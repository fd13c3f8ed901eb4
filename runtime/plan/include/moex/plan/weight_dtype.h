// How many bytes each parameter takes at a deployment dtype, part by part.
//
//   fp32, bf16, fp16: every weight at 4 or 2 bytes.
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

enum class WeightDtype { kFp32, kBf16, kFp16, kFp8, kFp4 };

absl::StatusOr<WeightDtype> ParseWeightDtype(std::string_view name);
std::string_view WeightDtypeName(WeightDtype dtype);

// A plan's dtype and where it came from.
struct DtypeChoice {
  WeightDtype dtype = WeightDtype::kBf16;
  // "quantization_config", "torch_dtype" or "dtype" (the config field read),
  // "--dtype", or "default" (bf16: a preset, or a config that names none).
  std::string source = "default";
  std::string detail;              // what was read, e.g. "quant_method fp8, e4m3, 128x128 blocks"
  std::vector<std::string> notes;  // e.g. what --dtype overrode
};

// The dtype the config declares (arch.stored): quantization_config's
// quant_method first (fp8 -> fp8, mxfp4 -> fp4), else torch_dtype or dtype
// (bfloat16 -> bf16, float16 -> fp16, float32 -> fp32), else bf16 by default.
// A value moex cannot size is an error that names the file, the field, the
// value, and that --dtype overrides it.
absl::StatusOr<DtypeChoice> DtypeFromConfig(const model::ModelArch& arch);

// `flag` is --dtype ("": not given, the config decides).
absl::StatusOr<DtypeChoice> ChooseDtype(std::string_view flag, const model::ModelArch& arch);

struct DtypeScheme {
  WeightDtype dtype = WeightDtype::kBf16;
  std::array<double, model::kNumParts> bytes_per_param{};
  std::vector<model::Part> quantised;  // parts stored below 16 bits
  std::string format;                  // e.g. "e4m3, fp32 scale per 128x128 block"
};

DtypeScheme SchemeFor(WeightDtype dtype);

}  // namespace moex::plan
