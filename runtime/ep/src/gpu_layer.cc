#include "moex/ep/gpu_layer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "moex/core/str_cat.h"

namespace moex::ep {
namespace {

std::string PluginPath() {
  if (const char* path = std::getenv("MOEX_GPU_PLUGIN"); path != nullptr && *path != '\0') return path;
  std::error_code error;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "libmoex_gpu.so";  // the loader's search path
  return (exe.parent_path() / "libmoex_gpu.so").string();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Layer>> LoadGpuLayer(const GpuLayerArgs& args) {
  const std::string path = PluginPath();
  // Kept loaded for the life of the process: the layer's code lives there.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(
        StrCat("rank ", args.rank, ": --device cuda needs the GPU plugin ", path, ", which did not load (",
               why != nullptr ? why : "unknown", "); it is built beside moex where nvcc and NCCL are found, "
               "or named by MOEX_GPU_PLUGIN"));
  }
  auto factory = reinterpret_cast<GpuLayerFactory>(dlsym(handle, kGpuLayerFactorySymbol));
  if (factory == nullptr) {
    return absl::FailedPreconditionError(
        StrCat("rank ", args.rank, ": ", path, " has no ", kGpuLayerFactorySymbol, ": not a moex GPU plugin"));
  }
  absl::Status error;
  Layer* layer = factory(&args, &error);
  if (layer == nullptr) {
    return error.ok() ? absl::InternalError(StrCat("rank ", args.rank, ": the GPU plugin made no layer")) : error;
  }
  return std::unique_ptr<Layer>(layer);
}

}  // namespace moex::ep
