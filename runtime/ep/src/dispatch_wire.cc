// Rows on the wire between hosts (DispatchOptions::dtype): fp32 as they
// are, or fp8 in DeepEP's format (kernels/fp8_rows.h). The paths pack
// their network records with WriteWireRow and, once the all-to-all-v has
// landed them, read them back as fp32 records (dispatch_internal.h's layout)
// with DecodeWireRecords, so that everything after the exchange is the same
// for both dtypes.
#include <cstring>

#include "dispatch_internal.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/kernels/fp8_rows.h"

namespace moex::ep {

std::string_view DispatchDtypeName(DispatchDtype dtype) {
  return dtype == DispatchDtype::kFp8 ? "fp8" : "fp32";
}

absl::StatusOr<DispatchDtype> ParseDispatchDtype(std::string_view name, std::string_view flag) {
  if (name == "fp32") return DispatchDtype::kFp32;
  if (name == "fp8") return DispatchDtype::kFp8;
  return absl::InvalidArgumentError(StrCat(flag, " is '", name.substr(0, 64), "'; known: fp32, fp8"));
}

int64_t WireRowBytes(DispatchDtype dtype, int64_t hidden) {
  if (dtype == DispatchDtype::kFp32) return hidden * static_cast<int64_t>(sizeof(float));
  // The values padded to 4 bytes, so that the scales and the pairs after
  // them are aligned.
  return (hidden + 3) / 4 * 4 + kernels::Fp8RowScales(hidden) * static_cast<int64_t>(sizeof(float));
}

const Tensor& Dispatcher::PrepareWire(const Tensor& x) {
  if (options_.dtype == DispatchDtype::kFp32) return x;
  const int64_t T = x.dim(0), H = x.dim(1), blocks = kernels::Fp8RowScales(H);
  if (static_cast<int64_t>(fp8_values_.size()) < T * H) fp8_values_.resize(T * H);
  if (static_cast<int64_t>(fp8_scales_.size()) < T * blocks) fp8_scales_.resize(T * blocks);
  kernels::QuantizeRowsFp8(x.data(), T, H, fp8_values_.data(), fp8_scales_.data());
  if (x_wire_.shape != x.shape) x_wire_ = Tensor(x.shape);
  for (int64_t t = 0; t < T; ++t) {
    kernels::DequantizeRowFp8(fp8_values_.data() + t * H, fp8_scales_.data() + t * blocks, H, x_wire_.row(t));
  }
  return x_wire_;
}

void Dispatcher::WriteWireRow(const Tensor& x, int64_t t, std::byte* dst) const {
  const int64_t H = x.dim(1);
  if (options_.dtype == DispatchDtype::kFp32) {
    std::memcpy(dst, x.row(t), H * sizeof(float));
    return;
  }
  const int64_t blocks = kernels::Fp8RowScales(H), padded = (H + 3) / 4 * 4;
  std::memcpy(dst, fp8_values_.data() + t * H, H);
  std::memset(dst + H, 0, padded - H);
  std::memcpy(dst + padded, fp8_scales_.data() + t * blocks, blocks * sizeof(float));
}

std::byte* Dispatcher::WireReceiveBuffer(int64_t records, int64_t H, int64_t k) {
  using dispatch_internal::RecordFloats;
  if (static_cast<int64_t>(recv_.size()) < records * RecordFloats(H, k)) recv_.resize(records * RecordFloats(H, k));
  if (options_.dtype == DispatchDtype::kFp32) return reinterpret_cast<std::byte*>(recv_.data());
  const int64_t bytes = records * dispatch_internal::WireRecordBytes(options_.dtype, H, k);
  if (static_cast<int64_t>(wire_recv_.size()) < bytes) wire_recv_.resize(bytes);
  return wire_recv_.data();
}

void Dispatcher::DecodeWireRecords(int64_t records, int64_t H, int64_t k) {
  if (options_.dtype == DispatchDtype::kFp32) return;  // landed as fp32 records
  const int64_t wire = dispatch_internal::WireRecordBytes(options_.dtype, H, k);
  const int64_t row = WireRowBytes(options_.dtype, H), padded = (H + 3) / 4 * 4;
  const int64_t record = dispatch_internal::RecordFloats(H, k);
  for (int64_t n = 0; n < records; ++n) {
    const std::byte* in = wire_recv_.data() + n * wire;
    float* out = recv_.data() + n * record;
    kernels::DequantizeRowFp8(reinterpret_cast<const uint8_t*>(in), reinterpret_cast<const float*>(in + padded), H,
                              out);
    std::memcpy(out + H, in + row, 2 * k * sizeof(float));
  }
}

}  // namespace moex::ep
