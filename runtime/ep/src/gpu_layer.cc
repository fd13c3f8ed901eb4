#include "moex/ep/gpu_layer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <filesystem>

#include "moex/core/build_info.h"
#include "moex/core/str_cat.h"

namespace moex::ep {
namespace {

#ifndef MOEX_GPU_PLUGIN_FROM_BIN
#define MOEX_GPU_PLUGIN_FROM_BIN "../lib/moex"
#endif

// MOEX_GPU_PLUGIN, else beside the running binary (the build tree: bin/),
// else where `cmake --install` puts it from the binary's folder
// (bin/../lib/moex); when neither file exists, the one beside the binary
// is named.
std::string PluginPath() {
  if (const char* path = std::getenv("MOEX_GPU_PLUGIN"); path != nullptr && *path != '\0') return path;
  std::error_code error;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return "libmoex_gpu.so";  // the loader's search path
  const std::filesystem::path beside = exe.parent_path() / "libmoex_gpu.so";
  const std::filesystem::path installed =
      (exe.parent_path() / MOEX_GPU_PLUGIN_FROM_BIN / "libmoex_gpu.so").lexically_normal();
  if (!std::filesystem::exists(beside, error) && std::filesystem::exists(installed, error)) return installed.string();
  return beside.string();
}

}  // namespace

absl::Status CheckGpuPlugin(const GpuPluginInfo* info, const std::string& path, int rank) {
  const std::string ours = StrCat("moex ", build::kVersion, " (build ", build::kBuildId, ", plugin ABI ",
                                  kGpuPluginAbiVersion, ")");
  const std::string fix = "; use the libmoex_gpu.so built with this moex (beside it, or named by MOEX_GPU_PLUGIN)";
  if (info == nullptr) {
    return absl::FailedPreconditionError(StrCat("rank ", rank, ": the GPU plugin ", path, " has no ",
                                                kGpuPluginInfoSymbol, ": it predates versioned plugins, and this is ",
                                                ours, fix));
  }
  // Read field by field, within the size it says it has.
  const uint32_t abi = info->size >= offsetof(GpuPluginInfo, moex_version) ? info->abi_version : 0;
  const char* version = info->size >= offsetof(GpuPluginInfo, build_id) && info->moex_version != nullptr
                            ? info->moex_version : "?";
  const char* id = info->size >= sizeof(GpuPluginInfo) && info->build_id != nullptr ? info->build_id : "?";
  if (abi != kGpuPluginAbiVersion || std::string(id) != build::kBuildId) {
    return absl::FailedPreconditionError(StrCat("rank ", rank, ": the GPU plugin ", path, " is moex ",
                                                std::string(version).substr(0, 64), " (build ",
                                                std::string(id).substr(0, 128), ", plugin ABI ", abi, ") and this is ",
                                                ours, ": they pass C++ objects to each other, so only a plugin of the "
                                                "same build may load", fix));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Layer>> LoadGpuLayer(const GpuLayerArgs& args) {
  const std::string path = PluginPath();
  // Kept loaded for the life of the process: the layer's code lives there.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(
        StrCat("rank ", args.rank, ": --device cuda needs the GPU plugin ", path, ", which did not load (",
               why != nullptr ? why : "unknown", "); it is built beside moex where nvcc and NCCL are found (installed: "
               "lib/moex/), or named by MOEX_GPU_PLUGIN"));
  }
  auto info = reinterpret_cast<GpuPluginInfoFunction>(dlsym(handle, kGpuPluginInfoSymbol));
  if (absl::Status same = CheckGpuPlugin(info != nullptr ? info() : nullptr, path, args.rank); !same.ok()) {
    return same;  // left loaded: unloading code that may have run its constructors is not safe either
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
