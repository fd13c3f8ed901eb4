// The layer on GPUs, as the CPU side of moex sees it.
//
// The GPU path (runtime/ep/cuda: CudaMoeLayer over NcclTransport, the CUDA
// kernels, cuBLAS, NCCL) lives in a plugin, libmoex_gpu.so, built beside the
// moex binary where nvcc and NCCL are found, and loaded only by `moex run
// --device cuda`. Linking it into moex itself cost every process, the
// controller and each CPU rank included, about 150 MiB of resident memory
// for the CUDA libraries it would never use.
#pragma once

#include <cstdint>
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

// The plugin's second entry point, asked before the first: which build of
// moex it belongs to. Plain C, so that any plugin, however old or foreign,
// can be asked safely. `size` lets later versions add fields at the end.
struct GpuPluginInfo {
  uint32_t size = sizeof(GpuPluginInfo);
  uint32_t abi_version = 0;      // kGpuPluginAbiVersion of the plugin's build
  const char* moex_version = "";  // build::kVersion
  const char* build_id = "";      // build::kBuildId: version+revision+boundary digest
};
// Bumped when GpuLayerArgs, the factory's signature or this struct change.
inline constexpr uint32_t kGpuPluginAbiVersion = 2;
using GpuPluginInfoFunction = const GpuPluginInfo* (*)();
inline constexpr char kGpuPluginInfoSymbol[] = "moex_gpu_plugin_info";

// Whether a plugin that says `info` (null: it has no info entry point, a
// plugin from before 2026-12) may be loaded by this build: the same ABI
// version and build id, else FAILED_PRECONDITION naming both builds and
// `path`.
absl::Status CheckGpuPlugin(const GpuPluginInfo* info, const std::string& path, int rank);

// Loads the plugin (MOEX_GPU_PLUGIN, else libmoex_gpu.so beside the running
// executable, else in ../lib/moex from it, where `cmake --install` puts it;
// a program of your own built against the installed moex sets
// MOEX_GPU_PLUGIN, which its package gives as moex_GPU_PLUGIN), checks it is
// of this build (CheckGpuPlugin) and makes the layer: collective over `host`
// (NCCL's bootstrap). The error names the file and what dlopen said, or both
// builds.
absl::StatusOr<std::unique_ptr<Layer>> LoadGpuLayer(const GpuLayerArgs& args);

}  // namespace moex::ep
