// An oracle for the routers that does not share their code. Each case is
// small enough to work out by hand: the comment above it shows the
// arithmetic (logits, softmax or sigmoid values, which experts win, the
// weights), and the expected numbers are literals from that arithmetic. No
// expected value comes from production routing code, so a routing-semantics
// error in kernels::Route shows up here even where ReferenceForward, which
// routes with the same code as the layer, cannot see it.
//
// The definitions followed are those of the models' own code: transformers'
// DeepseekV2Moe.route_tokens_to_experts (softmax, group_limited_greedy ranks
// groups by their best probability) and DeepseekV3MoE.route_tokens_to_experts
// (sigmoid, noaux_tc ranks groups by the sum of their two best biased scores,
// weights from the unbiased sigmoid, renormalised, then scaled).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "moex/kernels/router.h"

namespace moex::kernels {
namespace {

struct Choice {
  int32_t expert = 0;
  double weight = 0;
};

// The production router's answer for `logits` [T, E].
struct Routed {
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [T, k]
  std::vector<float> weights;    // [T, k]
};

Routed RouteTokens(const model::RouterSpec& spec, int64_t num_experts, int64_t top_k,
                   const std::vector<float>& logits, const std::vector<float>& correction_bias = {}) {
  EXPECT_TRUE(CheckRouterSupported(spec, num_experts, top_k).ok());
  const int64_t num_tokens = static_cast<int64_t>(logits.size()) / num_experts;
  RouteParams params;
  params.spec = spec;
  params.num_experts = num_experts;
  params.top_k = top_k;
  params.correction_bias = correction_bias.empty() ? nullptr : correction_bias.data();
  Routed routed;
  routed.top_k = top_k;
  routed.experts.assign(num_tokens * top_k, -1);
  routed.weights.assign(num_tokens * top_k, 0.0f);
  std::vector<float> scratch(2 * num_experts);
  Route(params, logits.data(), num_tokens, routed.experts.data(), routed.weights.data(), scratch.data());
  return routed;
}

// Token `token`'s choices equal `want` (listed by expert index): the order in
// which the router lists a token's experts is not part of the semantics, the
// set of experts and each one's weight are. Weights agree to 1e-6, relative
// to the weight where it exceeds 1 (routed_scaling_factor).
void ExpectChoices(const Routed& routed, int64_t token, std::vector<Choice> want) {
  SCOPED_TRACE(testing::Message() << "token " << token);
  ASSERT_EQ(static_cast<int64_t>(want.size()), routed.top_k);
  std::vector<Choice> got;
  for (int64_t j = 0; j < routed.top_k; ++j) {
    got.push_back({routed.experts[token * routed.top_k + j], routed.weights[token * routed.top_k + j]});
  }
  std::sort(got.begin(), got.end(), [](const Choice& a, const Choice& b) { return a.expert < b.expert; });
  for (size_t j = 0; j < want.size(); ++j) {
    EXPECT_EQ(got[j].expert, want[j].expert) << "choice " << j;
    EXPECT_NEAR(got[j].weight, want[j].weight, 1e-6 * std::max(1.0, std::abs(want[j].weight)))
        << "expert " << want[j].expert;
  }
}

model::RouterSpec Softmax(bool norm_topk_prob) {
  model::RouterSpec spec;
  spec.scoring = "softmax";
  spec.norm_topk_prob = norm_topk_prob;
  return spec;
}

model::RouterSpec Sigmoid(bool norm_topk_prob) {
  model::RouterSpec spec;
  spec.scoring = "sigmoid";
  spec.norm_topk_prob = norm_topk_prob;
  return spec;
}

// Softmax over all experts, top-2, weights left as probabilities (Qwen-MoE
// and OLMoE with norm_topk_prob false). Two tokens, to check rows are apart.
//
// token 0, logits {1, 2, 0.5, 3}:
//   exp = {2.7182818, 7.3890561, 1.6487213, 20.0855369}, sum 31.8415961
//   p   = {0.0853689, 0.2320567, 0.0517789, 0.6307955}
//   top-2: expert 3 (0.6307955), expert 1 (0.2320567)
// token 1, logits {0, -1, 0.25, 0.5}:
//   exp = {1, 0.3678794, 1.2840254, 1.6487213}, sum 4.3006261
//   p   = {0.2325243, 0.0855409, 0.2985671, 0.3833677}
//   top-2: expert 3 (0.3833677), expert 2 (0.2985671)
TEST(RouterOracleTest, SoftmaxTopKKeepsTheProbabilities) {
  Routed r = RouteTokens(Softmax(false), 4, 2, {1.0f, 2.0f, 0.5f, 3.0f, 0.0f, -1.0f, 0.25f, 0.5f});
  ExpectChoices(r, 0, {{1, 0.2320567}, {3, 0.6307955}});
  ExpectChoices(r, 1, {{2, 0.2985671}, {3, 0.3833677}});
}

// Softmax, top-2, renormalised (Mixtral; norm_topk_prob). The two kept
// probabilities divided by their sum are a softmax over the two logits alone:
//   logits {1, 2, 0.5, 3} -> experts 3 and 1 (as above)
//   w3 = e^3 / (e^3 + e^2) = 1 / (1 + e^-1) = 0.7310586
//   w1 = e^2 / (e^3 + e^2) = 1 / (1 + e^1)  = 0.2689414
TEST(RouterOracleTest, SoftmaxTopKRenormalised) {
  Routed r = RouteTokens(Softmax(true), 4, 2, {1.0f, 2.0f, 0.5f, 3.0f});
  ExpectChoices(r, 0, {{1, 0.2689414}, {3, 0.7310586}});
}

// routed_scaling_factor multiplies after the renormalisation, so the k
// weights sum to the factor (DeepSeek-V3: topk_weights /= sum, then *= factor).
//   same case, factor 2: w3 = 2 * 0.7310586 = 1.4621172, w1 = 2 * 0.2689414 = 0.5378828
TEST(RouterOracleTest, ScalingFactorAppliesAfterRenormalisation) {
  model::RouterSpec spec = Softmax(true);
  spec.routed_scaling_factor = 2.0;
  Routed r = RouteTokens(spec, 4, 2, {1.0f, 2.0f, 0.5f, 3.0f});
  ExpectChoices(r, 0, {{1, 0.5378828}, {3, 1.4621172}});
}

// Sigmoid without renormalisation, top-1 (Llama 4): the weight is the
// expert's own sigmoid.
//   logits {0.3, -1, 2, 1} -> s = {0.5744425, 0.2689414, 0.8807971, 0.7310586}
//   top-1: expert 2, w = 1 / (1 + e^-2) = 1 / 1.1353353 = 0.8807971
TEST(RouterOracleTest, SigmoidTopOneKeepsTheSigmoid) {
  Routed r = RouteTokens(Sigmoid(false), 4, 1, {0.3f, -1.0f, 2.0f, 1.0f});
  ExpectChoices(r, 0, {{2, 0.8807971}});
}

// Sigmoid with a correction bias (DeepSeek-V3 noaux_tc, one group): the bias
// moves the choice only; the weights are the unbiased sigmoids, renormalised.
//   logits {0, 1, -1, 2}
//   s      = {0.5, 0.7310586, 0.2689414, 0.8807971}
//   bias   = {0, -0.5, 0.9, 0}
//   choice = s + bias = {0.5, 0.2310586, 1.1689414, 0.8807971}
//   top-2 by choice: expert 2 (1.1689414), expert 3 (0.8807971)
//     (without the bias it would be experts 3 and 1)
//   weights from s: 0.2689414 + 0.8807971 = 1.1497385
//   w2 = 0.2689414 / 1.1497385 = 0.2339153
//   w3 = 0.8807971 / 1.1497385 = 0.7660847
//   (weights from the biased choice would be 1.1689414 / 2.0497385 = 0.5702875: wrong)
TEST(RouterOracleTest, SigmoidCorrectionBiasChoosesButDoesNotWeigh) {
  Routed r = RouteTokens(Sigmoid(true), 4, 2, {0.0f, 1.0f, -1.0f, 2.0f}, {0.0f, -0.5f, 0.9f, 0.0f});
  ExpectChoices(r, 0, {{2, 0.2339153}, {3, 0.7660847}});
}

// Group-limited sigmoid routing (DeepSeek-V3: n_group 2, topk_group 1, top-2,
// routed_scaling_factor 2.5), no bias. A group's score is the sum of its two
// best scores, not its best one; the two rules pick different groups here.
//   logits  group 0 {3, -2, -2.5, -3}     group 1 {1.5, 1.2, -3, -3.5}
//   s       group 0 {0.9525741, 0.1192029, 0.0758582, 0.0474259}
//           group 1 {0.8175745, 0.7685248, 0.0474259, 0.0293122}
//   group score (top-2 sum): g0 0.9525741 + 0.1192029 = 1.0717770
//                            g1 0.8175745 + 0.7685248 = 1.5860993 -> keep g1
//     (by the best score alone g0 would win, 0.9525741 > 0.8175745, giving
//      experts 0 and 1; with no groups the top-2 would be experts 0 and 4)
//   top-2 inside g1: experts 4 and 5
//   w4 = 2.5 * 0.8175745 / 1.5860993 = 2.5 * 0.5154624 = 1.2886559
//   w5 = 2.5 * 0.7685248 / 1.5860993 = 2.5 * 0.4845376 = 1.2113441
TEST(RouterOracleTest, SigmoidGroupsRankByTheSumOfTheirTwoBest) {
  model::RouterSpec spec = Sigmoid(true);
  spec.num_groups = 2;
  spec.topk_groups = 1;
  spec.routed_scaling_factor = 2.5;
  Routed r = RouteTokens(spec, 8, 2, {3.0f, -2.0f, -2.5f, -3.0f, 1.5f, 1.2f, -3.0f, -3.5f},
                         std::vector<float>(8, 0.0f));
  ExpectChoices(r, 0, {{4, 1.2886559}, {5, 1.2113441}});
}

// The same token with bias +0.6 on expert 1: group scores use the biased
// choice, so the bias flips which group is kept; the weights stay unbiased.
//   choice group 0 {0.9525741, 0.1192029 + 0.6 = 0.7192029, 0.0758582, 0.0474259}
//   group score: g0 0.9525741 + 0.7192029 = 1.6717770 > g1 1.5860993 -> keep g0
//     (by the unbiased scores g1 would win, as in the case above)
//   top-2 inside g0: experts 0 (0.9525741) and 1 (0.7192029)
//   weights from s: 0.9525741 + 0.1192029 = 1.0717770
//   w0 = 2.5 * 0.9525741 / 1.0717770 = 2.5 * 0.8887801 = 2.2219503
//   w1 = 2.5 * 0.1192029 / 1.0717770 = 2.5 * 0.1112199 = 0.2780497
TEST(RouterOracleTest, SigmoidGroupsRankByTheBiasedChoice) {
  model::RouterSpec spec = Sigmoid(true);
  spec.num_groups = 2;
  spec.topk_groups = 1;
  spec.routed_scaling_factor = 2.5;
  Routed r = RouteTokens(spec, 8, 2, {3.0f, -2.0f, -2.5f, -3.0f, 1.5f, 1.2f, -3.0f, -3.5f},
                         {0.0f, 0.6f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f});
  ExpectChoices(r, 0, {{0, 2.2219503}, {1, 0.2780497}});
}

// Experts of a group that is not kept are never chosen, even where every
// kept expert's biased choice is negative. This follows DeepSeek-V3's own
// inference code (the dropped groups' scores become -inf). transformers'
// DeepseekV3MoE fills them with 0.0 instead and would pick experts 2 and 3
// here; the two agree whenever the kept groups hold k positive choices.
//   logits {0, 0, 0, 0} -> s = 0.5 each; bias {-1, -1.2, -3, -3}
//   choice = {-0.5, -0.7, -2.5, -2.5}
//   group score: g0 -0.5 + -0.7 = -1.2 > g1 -5.0 -> keep g0: experts 0 and 1
//   weights: 0.5 / (0.5 + 0.5) = 0.5 each
TEST(RouterOracleTest, SigmoidDroppedGroupsStayDroppedUnderNegativeChoices) {
  model::RouterSpec spec = Sigmoid(true);
  spec.num_groups = 2;
  spec.topk_groups = 1;
  Routed r = RouteTokens(spec, 4, 2, {0.0f, 0.0f, 0.0f, 0.0f}, {-1.0f, -1.2f, -3.0f, -3.0f});
  ExpectChoices(r, 0, {{0, 0.5}, {1, 0.5}});
}

// Group-limited softmax routing (DeepSeek-V2 group_limited_greedy: n_group 4,
// topk_group 2, top-3, no renormalisation, routed_scaling_factor 16). A
// group's score is its best probability.
//   logits = {2, -3 | 1.8, 1.7 | 1.9, -2.5 | 0, -1}
//   exp    = {7.3890561, 0.0497871 | 6.0496475, 5.4739474 |
//             6.6858944, 0.0820850 | 1, 0.3678794}, sum 27.0982969
//   p      = {0.2726760, 0.0018373 | 0.2232483, 0.2020034 |
//             0.2467275, 0.0030292 | 0.0369027, 0.0135757}
//   group score (best p): g0 0.2726760, g1 0.2232483, g2 0.2467275, g3 0.0369027
//     -> keep g0 and g2: experts 0, 1, 4, 5
//     (by the sum of the two best, g1 0.4252516 and g0 0.2745133 would be
//      kept, giving experts 0, 2, 3; with no groups: experts 0, 4, 2)
//   top-3 of p among 0, 1, 4, 5: experts 0, 4, 5
//   w0 = 16 * 0.2726760 = 4.3628165
//   w4 = 16 * 0.2467275 = 3.9476396
//   w5 = 16 * 0.0030292 = 16 * 0.0820850 / 27.0982969 = 0.0484665
TEST(RouterOracleTest, SoftmaxGroupsRankByTheirBestProbability) {
  model::RouterSpec spec = Softmax(false);
  spec.num_groups = 4;
  spec.topk_groups = 2;
  spec.routed_scaling_factor = 16.0;
  Routed r = RouteTokens(spec, 8, 3, {2.0f, -3.0f, 1.8f, 1.7f, 1.9f, -2.5f, 0.0f, -1.0f});
  ExpectChoices(r, 0, {{0, 4.3628165}, {4, 3.9476396}, {5, 0.0484665}});
}

// Ties go to the lower expert index (router.h), so every rank routes alike.
//   logits {1, 2, 2, 2}: experts 1, 2 and 3 tie at
//   p = e^2 / (e + 3 e^2) = 7.3890561 / 24.8854501 = 0.2969227
//   top-2: experts 1 and 2, not 3
TEST(RouterOracleTest, TiedExpertsGoToTheLowerIndex) {
  Routed r = RouteTokens(Softmax(false), 4, 2, {1.0f, 2.0f, 2.0f, 2.0f});
  ExpectChoices(r, 0, {{1, 0.2969227}, {2, 0.2969227}});
}

// Tied groups too: the lower group index is kept.
//   logits {0, 1 | 1, 0} -> s = {0.5, 0.7310586 | 0.7310586, 0.5}
//   group score: g0 = g1 = 1.2310586 -> keep g0: experts 0 and 1
//   w1 = 0.7310586 / 1.2310586 = 0.5938455
//   w0 = 0.5       / 1.2310586 = 0.4061545
TEST(RouterOracleTest, TiedGroupsGoToTheLowerIndex) {
  model::RouterSpec spec = Sigmoid(true);
  spec.num_groups = 2;
  spec.topk_groups = 1;
  Routed r = RouteTokens(spec, 4, 2, {0.0f, 1.0f, 1.0f, 0.0f});
  ExpectChoices(r, 0, {{0, 0.4061545}, {1, 0.5938455}});
}

// DeepSeek-V4's sqrtsoftplus scoring: s = sqrt(log(1 + e^logit)), chosen as
// the sigmoid router chooses, weights s renormalised.
//   logits {0, 1, -1, 2}
//   softplus = {0.6931472, 1.3132617, 0.3132617, 2.1269280}
//   s        = {0.8325546, 1.1459763, 0.5596979, 1.4583991}
//   top-2: expert 3, expert 1; sum 2.6043754
//   w3 = 0.5599804, w1 = 0.4400196
TEST(RouterOracleTest, SqrtSoftplusScoresAndRenormalises) {
  model::RouterSpec spec = Sigmoid(true);
  spec.scoring = "sqrtsoftplus";
  Routed r = RouteTokens(spec, 4, 2, {0.0f, 1.0f, -1.0f, 2.0f});
  ExpectChoices(r, 0, {{1, 0.4400196}, {3, 0.5599804}});
  // Far out on either side softplus neither overflows nor loses itself:
  // s(100) = 10, s(-100) = sqrt(e^-100) = e^-50.
  spec.norm_topk_prob = false;
  Routed plain = RouteTokens(spec, 2, 2, {100.0f, -100.0f});
  ExpectChoices(plain, 0, {{0, 10.0}, {1, std::exp(-50.0)}});
}

// DeepSeek-V4's hash-routed layers: the experts are given (tid2eid[id]),
// even ones the scores would not choose; weights are their sqrtsoftplus
// scores renormalised and scaled, and no bias enters.
//   s = {0.8325546, 1.1459763, 0.5596979, 1.4583991}; chosen {2, 0}:
//   sum 1.3922525, times 2.5: w2 = 1.0050222, w0 = 1.4949778
TEST(RouterOracleTest, HashRoutedLayersWeighTheGivenExperts) {
  model::RouterSpec spec = Sigmoid(true);
  spec.scoring = "sqrtsoftplus";
  spec.routed_scaling_factor = 2.5;
  RouteParams params{.spec = spec, .num_experts = 4, .top_k = 2};
  const std::vector<float> logits = {0.0f, 1.0f, -1.0f, 2.0f, 0.0f, 1.0f, -1.0f, 2.0f};
  const std::vector<int32_t> chosen = {2, 0, 3, 1};
  Routed r;
  r.top_k = 2;
  r.experts.assign(4, -1);
  r.weights.assign(4, 0.0f);
  std::vector<float> scratch(8);
  RouteByTable(params, logits.data(), 2, chosen.data(), r.experts.data(), r.weights.data(), scratch.data());
  ExpectChoices(r, 0, {{0, 1.4949778}, {2, 1.0050222}});
  ExpectChoices(r, 1, {{1, 2.5 * 0.4400196}, {3, 2.5 * 0.5599804}});
}

// Llama 4 chooses by the logit: two logits whose float sigmoids both round
// to 1 are still told apart (20 beats 17 though both score 1.0f).
TEST(RouterOracleTest, SigmoidWithoutBiasChoosesByTheLogitPastSaturation) {
  Routed r = RouteTokens(Sigmoid(false), 3, 1, {17.0f, 20.0f, -1.0f});
  ExpectChoices(r, 0, {{1, 1.0}});
}

// Top-k of many experts (Qwen3.5: top-10 of 512): the k largest, largest
// first, against a sort.
TEST(RouterOracleTest, TopTenOfFiveHundredTwelveMatchesASort) {
  std::vector<float> logits(512);
  for (int e = 0; e < 512; ++e) logits[e] = static_cast<float>((e * 7919) % 512) / 64.0f;  // a permutation
  Routed r = RouteTokens(Softmax(false), 512, 10, logits);
  std::vector<int32_t> order(512);
  for (int e = 0; e < 512; ++e) order[e] = e;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (int j = 0; j < 10; ++j) EXPECT_EQ(r.experts[j], order[j]) << "place " << j;
}

}  // namespace
}  // namespace moex::kernels
