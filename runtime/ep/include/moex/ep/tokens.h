// Token helpers for runs and benchmarks.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "moex/core/deadline.h"
#include "moex/core/tensor.h"
#include "moex/ep/moe_weights.h"
#include "moex/transport/transport.h"

namespace moex::ep {

// Hidden states [count, H] for global tokens first..first+count-1 whose
// routing follows a Zipf law of exponent `skew` over the experts (0:
// uniform): each token is a sum of the router rows of top-k experts drawn
// from that law, plus noise. A pure function of (seed, token index).
Tensor SyntheticTokens(const MoeLayerSpec& spec, const Tensor& router, uint64_t seed, double skew,
                       int64_t first, int64_t count);

// Rank 0 receives every rank's rows, in rank order ([sum of rows, H]); other
// ranks get an empty tensor.
absl::StatusOr<Tensor> GatherRows(transport::Transport& transport, const Tensor& local,
                                  int64_t hidden, Deadline deadline);

}  // namespace moex::ep
