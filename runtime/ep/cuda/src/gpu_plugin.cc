// libmoex_gpu.so's one entry point: NcclTransport + CudaMoeLayer behind
// ep::Layer. Everything else in the plugin is hidden (its copies of the
// moex libraries neither interpose on nor are interposed by the
// executable's).
#include "moex/ep/cuda_moe_layer.h"
#include "moex/core/build_info.h"
#include "moex/ep/gpu_layer.h"
#include "moex/core/str_cat.h"
#include "moex/transport/nccl_transport.h"

namespace moex::ep {
namespace {

class PluginLayer final : public Layer {
 public:
  PluginLayer(const GpuLayerArgs& args, std::unique_ptr<transport::NcclTransport> nccl,
              std::unique_ptr<CudaMoeLayer> layer)
      : spec_(*args.spec), placement_(*args.placement), rank_(args.rank), nccl_(std::move(nccl)),
        layer_(std::move(layer)) {}
  ~PluginLayer() override {
    layer_.reset();  // its buffers before the communicator and stream
    nccl_.reset();
  }
  // Hash-routed layers (the only ones with token ids) are refused at Create.
  absl::Status Forward(transport::Transport& host, const Tensor& x, std::span<const int64_t> /*token_ids*/,
                       int64_t first_token, Deadline deadline, Tensor* y,
                       StepStats* stats) override {
    return layer_->Forward(host, x, first_token, deadline, y, stats);
  }
  const MoeLayerSpec& spec() const override { return spec_; }
  const placement::Placement& placement() const override { return placement_; }
  int rank() const override { return rank_; }
  std::string DataPath() const override { return "NCCL all-to-all-v"; }
  std::string DataPathReason() const override { return nccl_->Describe(); }
  // The experts live on the device only.
  const ExpertWeights* HeldExpert(int64_t) const override { return nullptr; }
  absl::Status SwitchPlacement(placement::Placement, std::map<int64_t, ExpertWeights>) override {
    return absl::UnimplementedError(StrCat("rank ", rank_, ": live rebalancing is not on the GPU path yet"));
  }

 private:
  MoeLayerSpec spec_;
  placement::Placement placement_;
  int rank_;
  std::unique_ptr<transport::NcclTransport> nccl_;
  std::unique_ptr<CudaMoeLayer> layer_;
};

}  // namespace
}  // namespace moex::ep

extern "C" __attribute__((visibility("default"))) const moex::ep::GpuPluginInfo* moex_gpu_plugin_info() {
  static const moex::ep::GpuPluginInfo info{sizeof(moex::ep::GpuPluginInfo), moex::ep::kGpuPluginAbiVersion,
                                            moex::build::kVersion, moex::build::kBuildId};
  return &info;
}

extern "C" __attribute__((visibility("default"))) moex::ep::Layer* moex_gpu_layer_create(
    const moex::ep::GpuLayerArgs* args, absl::Status* error) {
  absl::StatusOr<std::unique_ptr<moex::transport::NcclTransport>> nccl =
      moex::transport::NcclTransport::Create(*args->host, args->deadline);
  if (!nccl.ok()) {
    *error = nccl.status();
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<moex::ep::CudaMoeLayer>> layer =
      moex::ep::CudaMoeLayer::Create(*args->spec, *args->placement, *args->weights, args->rank, **nccl);
  if (!layer.ok()) {
    *error = layer.status();
    return nullptr;
  }
  return new moex::ep::PluginLayer(*args, std::move(*nccl), std::move(*layer));
}
