// Stand-ins for libmoex_gpu.so in GpuPluginTest (no GPU, no CUDA): which
// build they say they are is set at compile time.
//   FAKE_PLUGIN_BUILD_ID unset: no info entry point (a plugin from before
//   versioned plugins); "this": the build id of this build; else that id.
#include <cstring>

#include "absl/status/status.h"
#include "moex/core/build_info.h"
#include "moex/ep/gpu_layer.h"

#ifdef FAKE_PLUGIN_BUILD_ID
extern "C" __attribute__((visibility("default"))) const moex::ep::GpuPluginInfo* moex_gpu_plugin_info() {
  static const char* const id =
      std::strcmp(FAKE_PLUGIN_BUILD_ID, "this") == 0 ? moex::build::kBuildId : FAKE_PLUGIN_BUILD_ID;
  static const moex::ep::GpuPluginInfo info{sizeof(moex::ep::GpuPluginInfo), moex::ep::kGpuPluginAbiVersion,
                                            "0.0.0-fake", id};
  return &info;
}
#endif

extern "C" __attribute__((visibility("default"))) moex::ep::Layer* moex_gpu_layer_create(
    const moex::ep::GpuLayerArgs*, absl::Status* error) {
  *error = absl::UnavailableError("fake GPU plugin: its factory ran and made no layer");
  return nullptr;
}
