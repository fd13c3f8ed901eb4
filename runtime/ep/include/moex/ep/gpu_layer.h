// The layer on GPUs, as the CPU side of moex sees it.
//
// The GPU path (runtime/ep/cuda: CudaMoeLayer over NcclTransport, the CUDA
// kernels, cuBLAS, NCCL) lives in a plugin, libmoex_gpu.so, built beside the
// moex binary where nvcc and NCCL are found, and loaded only by `moex run
// --device cuda`. Linking it into moex itself cost every process, the
// controller and each CPU rank included, about 150 MiB of resident memory
// for the CUDA libraries it would never use.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::ep {

class GpuLayer {
 public:
  virtual ~GpuLayer() = default;
  // As MoeLayer::Forward; `host` carries counts and routing pairs.
  virtual absl::Status Forward(transport::Transport& host, const Tensor& x, int64_t first_token, Deadline deadline,
                               Tensor* y, StepStats* stats) = 0;
  // "NCCL 2.28.3 on NVIDIA H200 (device 0)".
  virtual std::string Describe() const = 0;
};

// What the plugin's one entry point takes.
struct GpuLayerArgs {
  const MoeLayerSpec* spec = nullptr;
  const Placement* placement = nullptr;
  const MoeWeights* weights = nullptr;
  int rank = 0;
  transport::Transport* host = nullptr;
  Deadline deadline = Deadline::InSeconds(60);
};

// extern "C" entry point of libmoex_gpu.so: the layer, or null and `error`.
using GpuLayerFactory = GpuLayer* (*)(const GpuLayerArgs* args, absl::Status* error);
inline constexpr char kGpuLayerFactorySymbol[] = "moex_gpu_layer_create";

// Loads the plugin (MOEX_GPU_PLUGIN, else libmoex_gpu.so beside the running
// executable) and makes the layer: collective over `host` (NCCL's bootstrap).
// The error names the file and what dlopen said.
absl::StatusOr<std::unique_ptr<GpuLayer>> LoadGpuLayer(const GpuLayerArgs& args);

}  // namespace moex::ep
