// One MoE layer expert-parallel on GPUs: the same layer, placement and
// results as MoeLayer, with the tokens, experts and exchanges on the device.
//
//   route      x -> bf16; router logits (cuBLAS SGEMM, fp32) -> top-k on the
//              GPU (kernels/cuda Route); the choices come to the host
//   layout     GetDispatchLayout, as on the CPU path: a token goes to a rank
//              once however many of its experts live there, with (local
//              slot, weight) pairs for that rank
//   dispatch   counts and the pairs over the host transport (MPI/UCX, with
//              its deadlines); token rows gathered destination-major and
//              exchanged by NcclTransport's all-to-all-v, bf16
//   experts    Permute into expert-major rows, gate/up GroupedGemm (up
//              alone for relu^2), the activation (SiLU, clamped SiLU,
//              gpt-oss's SwiGLU or relu^2, with gpt-oss's gate/up biases),
//              down GroupedGemm (plus the down bias), weighted Unpermute:
//              one partial row per received token, bf16; the shared expert
//              on the local tokens
//   combine    partial rows back over NCCL; each token's rows (one per rank
//              that served it, rank order, then the shared expert's) summed
//              in fp32 into y
//
// bf16 activations and expert weights, fp32 accumulation: the output
// matches the CPU path to bf16 precision (about 1e-2 relative), not to the
// CPU path's 1e-4. Buffers grow to the largest step seen and are reused;
// the hot path allocates nothing after that.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_layer.h"
#include "moex/ep/moe_weights.h"
#include "moex/placement/placement.h"
#include "moex/transport/nccl_transport.h"
#include "moex/transport/transport.h"

namespace moex::ep {

class CudaMoeLayer {
 public:
  // Uploads this rank's experts (bf16), the router and the shared expert to
  // `nccl`'s device. `weights` must hold every expert of this rank's slots.
  static absl::StatusOr<std::unique_ptr<CudaMoeLayer>> Create(const MoeLayerSpec& spec, const Placement& placement,
                                                              const MoeWeights& weights, int rank,
                                                              transport::NcclTransport& nccl);
  ~CudaMoeLayer();
  CudaMoeLayer(const CudaMoeLayer&) = delete;
  CudaMoeLayer& operator=(const CudaMoeLayer&) = delete;

  // As MoeLayer::Forward: x [T, H] host fp32 in, y [T, H] host fp32 out.
  // `host` carries counts and routing pairs; token rows go over NCCL.
  absl::Status Forward(transport::Transport& host, const Tensor& x, int64_t first_token, Deadline deadline, Tensor* y,
                       StepStats* stats);

 private:
  struct Impl;
  explicit CudaMoeLayer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace moex::ep
