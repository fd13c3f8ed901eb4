#include "moex/kernels/router.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "moex/core/str_cat.h"

namespace moex::kernels {

// Route() keeps per-token scratch for this many experts or groups on the stack.
constexpr int64_t kMaxRoutedExperts = 8192;

absl::Status CheckRouterSupported(const model::RouterSpec& spec, int64_t num_experts, int64_t top_k) {
  if (num_experts < 1 || num_experts > kMaxRoutedExperts) {
    return absl::InvalidArgumentError(StrCat(num_experts, " routed experts: the router handles 1 to ", kMaxRoutedExperts));
  }
  if (spec.scoring != "softmax" && spec.scoring != "sigmoid" && spec.scoring != "sqrtsoftplus") {
    return absl::UnimplementedError(StrCat("router scoring '", spec.scoring,
                                           "' is not implemented (softmax, sigmoid and sqrtsoftplus are)"));
  }
  if (top_k < 1 || top_k > num_experts) {
    return absl::InvalidArgumentError(StrCat("top-k ", top_k, " with ", num_experts, " experts"));
  }
  if (spec.num_groups < 1 || num_experts % spec.num_groups != 0 || spec.topk_groups < 1 ||
      spec.topk_groups > spec.num_groups) {
    return absl::InvalidArgumentError(StrCat("group-limited routing with ", spec.num_groups,
                                             " groups, top ", spec.topk_groups, " of them, over ",
                                             num_experts, " experts"));
  }
  if (top_k > spec.topk_groups * (num_experts / spec.num_groups)) {
    return absl::InvalidArgumentError(StrCat("top-k ", top_k, " exceeds the ",
                                             spec.topk_groups * (num_experts / spec.num_groups),
                                             " experts of the ", spec.topk_groups, " groups kept"));
  }
  return absl::OkStatus();
}

void RouterLogits(const float* x, int64_t num_tokens, int64_t hidden, const float* gate,
                  int64_t num_experts, float* logits) {
  if (num_tokens == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(num_tokens),
              static_cast<int>(num_experts), static_cast<int>(hidden), 1.0f, x,
              static_cast<int>(hidden), gate, static_cast<int>(hidden), 0.0f, logits,
              static_cast<int>(num_experts));
}

namespace {

// Indices of the k largest of `score` among experts with allowed[e], best
// first, ties to the lower index: an insertion into the k kept, O(E*k) at
// worst and about O(E) in practice (512 experts, top-10: Qwen3.5).
void TopK(const float* score, const bool* allowed, int64_t num_experts, int64_t k, int32_t* out) {
  if (k <= 0) return;
  int64_t kept = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (allowed != nullptr && !allowed[e]) continue;
    if (kept == k && !(score[e] > score[out[k - 1]])) continue;
    int64_t at = kept < k ? kept++ : k - 1;
    while (at > 0 && score[e] > score[out[at - 1]]) {
      out[at] = out[at - 1];
      --at;
    }
    out[at] = static_cast<int32_t>(e);
  }
  for (int64_t j = kept; j < k; ++j) out[j] = -1;
}

}  // namespace

namespace {

// The scores (what weighs) and choices (what selects) of one token's logits.
void Score(const RouteParams& p, const float* row, float* score, float* choice) {
  const int64_t E = p.num_experts;
  if (p.spec.scoring == "softmax") {
    float max = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < E; ++e) max = std::max(max, row[e]);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      score[e] = std::exp(row[e] - max);
      sum += score[e];
    }
    for (int64_t e = 0; e < E; ++e) {
      score[e] = static_cast<float>(score[e] / sum);
      choice[e] = score[e];
    }
    return;
  }
  const bool sigmoid = p.spec.scoring == "sigmoid";
  // Without a bias or groups the choice is by the logit itself (Llama 4's
  // top-k of the logits): the same order as the score's, without the
  // ties a float sigmoid makes where it rounds to 1.
  const bool by_logit = p.correction_bias == nullptr && p.spec.num_groups == 1;
  for (int64_t e = 0; e < E; ++e) {
    // sqrtsoftplus (DeepSeek-V4): sqrt(log(1 + e^x)), computed without overflow.
    score[e] = sigmoid ? 1.0f / (1.0f + std::exp(-row[e]))
                       : std::sqrt(std::max(row[e], 0.0f) + std::log1p(std::exp(-std::fabs(row[e]))));
    choice[e] = by_logit ? row[e] : score[e] + (p.correction_bias != nullptr ? p.correction_bias[e] : 0.0f);
  }
}

// The weights of the chosen experts `idx` [k]: their scores, renormalised
// when norm_topk_prob, times routed_scaling_factor.
void Weigh(const RouteParams& p, const float* score, const int32_t* idx, float* w) {
  const int64_t k = p.top_k;
  double total = 0;
  for (int64_t j = 0; j < k; ++j) {
    w[j] = score[idx[j]];
    total += w[j];
  }
  for (int64_t j = 0; j < k; ++j) {
    double weight = w[j];
    if (p.spec.norm_topk_prob) weight /= (total + 1e-20);
    w[j] = static_cast<float>(weight * p.spec.routed_scaling_factor);
  }
}

}  // namespace

void Route(const RouteParams& p, const float* logits, int64_t num_tokens, int32_t* topk_idx,
           float* topk_weights, float* scratch) {
  const int64_t E = p.num_experts, k = p.top_k;
  const int64_t groups = p.spec.num_groups, per_group = E / groups;
  float* score = scratch;       // [E] probabilities or sigmoid scores
  float* choice = scratch + E;  // [E] what selection ranks by
  bool allowed[kMaxRoutedExperts];
  for (int64_t t = 0; t < num_tokens; ++t) {
    Score(p, logits + t * E, score, choice);
    const bool* mask = nullptr;
    if (groups > 1) {
      // Rank groups: sigmoid (and sqrtsoftplus) routers by the sum of the two
      // best choices in the group (DeepSeek-V3), softmax routers by the best
      // one (V2).
      float group_score[kMaxRoutedExperts];
      for (int64_t g = 0; g < groups; ++g) {
        const float* c = choice + g * per_group;
        if (p.spec.scoring != "softmax" && per_group >= 2) {
          float first = -std::numeric_limits<float>::infinity(), second = first;
          for (int64_t i = 0; i < per_group; ++i) {
            if (c[i] > first) {
              second = first;
              first = c[i];
            } else if (c[i] > second) {
              second = c[i];
            }
          }
          group_score[g] = first + second;
        } else {
          group_score[g] = *std::max_element(c, c + per_group);
        }
      }
      int32_t kept[kMaxRoutedExperts];
      TopK(group_score, nullptr, groups, p.spec.topk_groups, kept);
      std::fill(allowed, allowed + E, false);
      for (int64_t i = 0; i < p.spec.topk_groups; ++i) {
        std::fill(allowed + kept[i] * per_group, allowed + (kept[i] + 1) * per_group, true);
      }
      mask = allowed;
    }
    TopK(choice, mask, E, k, topk_idx + t * k);
    Weigh(p, score, topk_idx + t * k, topk_weights + t * k);
  }
}

void RouteByTable(const RouteParams& p, const float* logits, int64_t num_tokens, const int32_t* chosen,
                  int32_t* topk_idx, float* topk_weights, float* scratch) {
  const int64_t E = p.num_experts, k = p.top_k;
  for (int64_t t = 0; t < num_tokens; ++t) {
    Score(p, logits + t * E, scratch, scratch + E);
    std::copy(chosen + t * k, chosen + (t + 1) * k, topk_idx + t * k);
    Weigh(p, scratch, topk_idx + t * k, topk_weights + t * k);
  }
}

}  // namespace moex::kernels
