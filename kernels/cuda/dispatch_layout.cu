// The dispatch layout on the device (moe_kernels.h, GetDispatchLayout): a
// thread a token.
#include <string>

#include "moex/kernels/cuda/moe_kernels.h"

namespace moex::kernels::cuda {
namespace {

constexpr int kMaxLayoutTopK = 16;
constexpr int kMaxLayoutRanks = 1024;

__global__ void LayoutKernel(DispatchLayoutArgs a) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= a.num_tokens) return;
  uint8_t* in_rank = a.is_token_in_rank + static_cast<size_t>(t) * a.world_size;
  for (int r = 0; r < a.world_size; ++r) in_rank[r] = 0;
  int ranks[kMaxLayoutTopK];
  int distinct = 0;
  const unsigned long long token = static_cast<unsigned long long>(a.first_token + t);
  for (int j = 0; j < a.top_k; ++j) {
    const int e = a.topk_idx[static_cast<size_t>(t) * a.top_k + j];
    int slot = -1;
    if (e >= 0 && e < a.num_experts) {
      const int begin = a.expert_slot_offsets[e], n = a.expert_slot_offsets[e + 1] - begin;
      if (n > 0) slot = a.expert_slots[begin + static_cast<int>(token % static_cast<unsigned long long>(n))];
    }
    if (slot < 0 || slot >= a.num_slots) slot = -1;
    a.topk_slot[static_cast<size_t>(t) * a.top_k + j] = slot;
    if (slot < 0) continue;
    atomicAdd(&a.num_tokens_per_slot[slot], 1);
    const int r = a.slot_rank[slot];
    if (r < 0 || r >= a.world_size) continue;
    bool seen = false;
    for (int i = 0; i < distinct; ++i) seen |= ranks[i] == r;
    if (seen) continue;
    ranks[distinct++] = r;
    in_rank[r] = 1;
    atomicAdd(&a.num_tokens_per_rank[r], 1);
  }
}

absl::Status Refuse(const std::string& why) {
  return absl::InvalidArgumentError("cuda GetDispatchLayout: " + why);
}

}  // namespace

absl::Status GetDispatchLayout(const DispatchLayoutArgs& a, cudaStream_t stream) {
  if (a.num_tokens < 0 || a.top_k < 1 || a.top_k > kMaxLayoutTopK) {
    return Refuse(std::to_string(a.num_tokens) + " tokens of top-" + std::to_string(a.top_k) +
                  ": top-k must be 1 to " + std::to_string(kMaxLayoutTopK));
  }
  if (a.world_size < 1 || a.world_size > kMaxLayoutRanks || a.num_slots < 1 || a.num_experts < 1) {
    return Refuse(std::to_string(a.num_experts) + " experts in " + std::to_string(a.num_slots) + " slots on " +
                  std::to_string(a.world_size) + " ranks: need an expert, a slot and 1 to " +
                  std::to_string(kMaxLayoutRanks) + " ranks");
  }
  if (!a.expert_slot_offsets || !a.expert_slots || !a.slot_rank || !a.num_tokens_per_rank ||
      !a.num_tokens_per_slot || (a.num_tokens > 0 && (!a.topk_idx || !a.topk_slot || !a.is_token_in_rank))) {
    return Refuse("a buffer is missing");
  }
  cudaError_t code = cudaMemsetAsync(a.num_tokens_per_rank, 0, sizeof(int32_t) * a.world_size, stream);
  if (code == cudaSuccess) code = cudaMemsetAsync(a.num_tokens_per_slot, 0, sizeof(int32_t) * a.num_slots, stream);
  if (code != cudaSuccess) return absl::InternalError(std::string("cuda GetDispatchLayout: ") + cudaGetErrorString(code));
  if (a.num_tokens == 0) return absl::OkStatus();
  constexpr int kThreads = 128;
  LayoutKernel<<<(a.num_tokens + kThreads - 1) / kThreads, kThreads, 0, stream>>>(a);
  code = cudaGetLastError();
  if (code != cudaSuccess) return absl::InternalError(std::string("cuda GetDispatchLayout launch: ") + cudaGetErrorString(code));
  return absl::OkStatus();
}

}  // namespace moex::kernels::cuda
