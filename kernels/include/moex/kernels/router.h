// Routing: which experts each token goes to, and with what weight.
//
// Two router kinds, following the model's config (model::RouterSpec):
//  - softmax: p = softmax(logits); top-k of p (optionally group-limited by
//    each group's best p, DeepSeek-V2); weights p, renormalised when
//    norm_topk_prob; times routed_scaling_factor.
//  - sigmoid (DeepSeek-V3, Kimi K2): s = sigmoid(logits); choice = s + bias;
//    groups ranked by the sum of their two best choices; the best
//    topk_groups kept; top-k of choice inside them; weights s (no bias),
//    renormalised when norm_topk_prob; times routed_scaling_factor.
//  - sqrtsoftplus (DeepSeek-V4): as sigmoid with s = sqrt(softplus(logits)).
// A router bias (gpt-oss) is added to the logits before any of this.
// Ties go to the lower expert index, so every rank routes alike.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "moex/model/architecture.h"

namespace moex::kernels {

// Checks that `spec` is a router these kernels implement for `num_experts`
// and `top_k`; the error names what is not supported.
absl::Status CheckRouterSupported(const model::RouterSpec& spec, int64_t num_experts, int64_t top_k);

// logits [T, E] = x [T, H] . gate^T, gate [E, H].
void RouterLogits(const float* x, int64_t num_tokens, int64_t hidden, const float* gate,
                  int64_t num_experts, float* logits);

struct RouteParams {
  model::RouterSpec spec;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  const float* correction_bias = nullptr;  // [E], sigmoid routers with noaux_tc
};

// topk_idx [T, k] (logical experts), topk_weights [T, k]. `scratch` holds at
// least 2 * E floats.
void Route(const RouteParams& params, const float* logits, int64_t num_tokens, int32_t* topk_idx,
           float* topk_weights, float* scratch);

// Hash-routed layers (DeepSeek-V4): the experts of token t are given,
// chosen [T, k] (each in [0, E)); their weights are computed from the
// logits as Route does (scores at the chosen experts, renormalised, scaled).
void RouteByTable(const RouteParams& params, const float* logits, int64_t num_tokens, const int32_t* chosen,
                  int32_t* topk_idx, float* topk_weights, float* scratch);

}  // namespace moex::kernels
