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
#include "moex/ep/layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// What the plugin's one entry point takes.
struct GpuLayerArgs {
  const MoeLayerSpec* spec = nullptr;
  const placement::Placement* placement = nullptr;
  const MoeWeights* weights = nullptr;
  int rank = 0;
  transport::Transport* host = nullptr;
  Deadline deadline = Deadline::InSeconds(60);
};

// extern "C" entry point of libmoex_gpu.so: the layer (an ep::Layer whose
// experts live on the device only: it holds no host copy of them, and live
// migration is refused), or null and `error`. The args' weights are uploaded
// during the call; the caller may drop them after it.
using GpuLayerFactory = Layer* (*)(const GpuLayerArgs* args, absl::Status* error);
inline constexpr char kGpuLayerFactorySymbol[] = "moex_gpu_layer_create";

// Loads the plugin (MOEX_GPU_PLUGIN, else libmoex_gpu.so beside the running
// executable, else in ../lib/moex from it, where `cmake --install` puts it;
// a program of your own built against the installed moex sets
// MOEX_GPU_PLUGIN, which its package gives as moex_GPU_PLUGIN) and makes the layer: collective over `host` (NCCL's bootstrap).
// The error names the file and what dlopen said.
absl::StatusOr<std::unique_ptr<Layer>> LoadGpuLayer(const GpuLayerArgs& args);

}  // namespace moex::ep
