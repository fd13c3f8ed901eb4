#include "dispatch_checks.h"

#include <algorithm>
#include <numeric>

#include "gtest/gtest.h"
#include "moex/placement/placement.h"

namespace moex::ep::testing {
namespace {

// Row h of token `token` of rank `source`: an integer below 2^15.
float Value(int source, int64_t token, int64_t h) {
  return static_cast<float>(source * 4096 + token * 8 + h % 8);
}

// The experts token `token` of rank `source` picks: k distinct ones, none
// served by `idle_rank`.
std::vector<int32_t> Route(const DispatchCase& c, const Placement& placement, int source, int64_t token, int seed) {
  std::vector<int32_t> allowed;
  for (int32_t e = 0; e < c.experts; ++e) {
    bool idle = false;
    for (int64_t slot : placement.expert_slots(e)) idle |= placement.slot_rank(slot) == c.idle_rank;
    if (!idle) allowed.push_back(e);
  }
  uint64_t state = 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(source) * 1000003 + token * 7919 + seed + 1);
  std::vector<int32_t> picked;
  while (static_cast<int64_t>(picked.size()) < std::min<int64_t>(c.top_k, allowed.size())) {
    state ^= state >> 33;
    state *= 0xff51afd7ed558ccdull;
    state ^= state >> 29;
    int32_t e = allowed[state % allowed.size()];
    if (std::find(picked.begin(), picked.end(), e) == picked.end()) picked.push_back(e);
  }
  return picked;
}

float Weight(int64_t j) { return 0.125f * static_cast<float>(j + 1); }

}  // namespace

std::vector<DispatchCase> DispatchCases(int world) {
  std::vector<DispatchCase> cases = {
      {.name = "world1_top2", .tokens = {7}, .experts = 4, .top_k = 2},
      {.name = "world2_top1", .tokens = {9, 4}, .experts = 6, .top_k = 1},
      {.name = "world2_one_rank_without_tokens", .tokens = {0, 11}, .experts = 8, .top_k = 3},
      {.name = "world3_uneven_top4", .tokens = {13, 0, 29}, .experts = 12, .top_k = 4},
      {.name = "world3_no_tokens", .tokens = {0, 0, 0}, .experts = 6, .top_k = 2},
      {.name = "world4_replicas", .tokens = {5, 17, 0, 11}, .experts = 8, .top_k = 3, .redundant = 4},
      {.name = "world4_rank2_receives_nothing", .tokens = {9, 9, 9, 9}, .experts = 8, .top_k = 2, .idle_rank = 2},
      {.name = "world5_top8_wide", .tokens = {1, 2, 3, 0, 4}, .experts = 16, .top_k = 8, .hidden = 40},
  };
  if (world > 0) {
    std::erase_if(cases, [world](const DispatchCase& c) { return static_cast<int>(c.tokens.size()) != world; });
  }
  return cases;
}

bool CheckDispatchAndCombine(transport::Transport& t, Dispatcher& dispatcher, const DispatchCase& c, int seed,
                             bool tensor_partial) {
  const int world = t.world_size(), me = t.rank();
  const int64_t H = c.hidden, k = c.top_k;
  const Placement placement = *Placement::Contiguous(c.experts, world, c.redundant);
  std::vector<int64_t> first_token(world + 1, 0);
  for (int r = 0; r < world; ++r) first_token[r + 1] = first_token[r] + c.tokens[r];

  // What each rank routes (every rank can compute every rank's).
  auto slots_of = [&](int source, int64_t token) {
    std::vector<int64_t> slots;
    for (int32_t e : Route(c, placement, source, token, seed)) {
      slots.push_back(placement.ChooseSlot(e, first_token[source] + token));
    }
    return slots;
  };
  const int64_t T = c.tokens[me];
  Tensor x({T, H});
  std::vector<int32_t> topk_idx(T * k);
  std::vector<float> topk_weights(T * k);
  for (int64_t tok = 0; tok < T; ++tok) {
    for (int64_t h = 0; h < H; ++h) x.row(tok)[h] = Value(me, tok, h);
    std::vector<int32_t> picked = Route(c, placement, me, tok, seed);
    if (static_cast<int64_t>(picked.size()) < k) {
      ADD_FAILURE() << c.name << ": fewer than top-k experts to pick from";
      return false;
    }
    for (int64_t j = 0; j < k; ++j) {
      topk_idx[tok * k + j] = picked[j];
      topk_weights[tok * k + j] = Weight(j);
    }
  }
  const DispatchLayout layout = GetDispatchLayout(placement, topk_idx.data(), T, k, first_token[me]);

  DispatchResult received;
  absl::Status status =
      dispatcher.Dispatch(t, placement, x, layout, topk_weights.data(), Deadline::InSeconds(30), &received);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return false;

  // Dispatch: source-rank-major, each source's tokens in order, own block
  // at this rank's position and not copied.
  EXPECT_EQ(DispatchPathName(received.path), dispatcher.path());
  EXPECT_EQ(received.send_tokens, layout.num_tokens_per_rank);
  const int64_t local_slots = placement.num_local_slots(me), my_first_slot = placement.first_slot(me);
  std::vector<int64_t> per_slot(local_slots, 0);
  int64_t row = 0, mismatches = 0;
  for (int s = 0; s < world; ++s) {
    EXPECT_EQ(received.first_row_from(s), row) << "source " << s;
    int64_t from_s = 0;
    for (int64_t tok = 0; tok < c.tokens[s]; ++tok) {
      std::vector<int64_t> slots = slots_of(s, tok);
      if (std::none_of(slots.begin(), slots.end(), [&](int64_t slot) { return placement.slot_rank(slot) == me; })) {
        continue;
      }
      ++from_s;
      if (row >= received.num_recv()) {
        ++row;
        continue;
      }
      const float* got = received.recv_rows[row];
      if (s == me) {
        EXPECT_EQ(got, x.row(tok)) << "own token " << tok << " was copied";
      }
      for (int64_t h = 0; h < H && mismatches < 5; ++h) {
        if (got[h] != Value(s, tok, h)) {
          ++mismatches;
          ADD_FAILURE() << "rank " << me << " row " << row << ": expected token " << tok << " of rank " << s
                        << ", h " << h << " is " << got[h] << " (" << Value(s, tok, h) << " expected)";
        }
      }
      for (int64_t j = 0; j < k; ++j) {
        const bool here = placement.slot_rank(slots[j]) == me;
        const int32_t want = here ? static_cast<int32_t>(slots[j] - my_first_slot) : -1;
        EXPECT_EQ(received.recv_local_slot[row * k + j], want) << "row " << row << " pair " << j;
        EXPECT_EQ(received.recv_weights[row * k + j], here ? Weight(j) : 0.0f) << "row " << row << " pair " << j;
        if (here) ++per_slot[want];
      }
      ++row;
    }
    EXPECT_EQ(received.recv_tokens[s], from_s) << "rows from rank " << s;
  }
  EXPECT_EQ(received.num_recv(), row);
  EXPECT_EQ(received.num_recv_tokens_per_expert, per_slot);
  int64_t remote_sent = 0;
  for (int d = 0; d < world; ++d) remote_sent += d == me ? 0 : layout.num_tokens_per_rank[d];
  EXPECT_EQ(received.bytes_sent, remote_sent * (H + 2 * k) * 4);

  // The experts' stand-in: this rank's partial sum of a row is the row
  // times (rank + 1). Token t comes home as x[t] x the sum of (d + 1) over
  // the ranks d it went to.
  const int64_t R = received.num_recv();
  Tensor own_partial({R, H});
  float* partial = tensor_partial ? own_partial.data() : dispatcher.PartialBuffer(received);
  for (int64_t i = 0; i < R; ++i) {
    for (int64_t h = 0; h < H; ++h) partial[i * H + h] = received.recv_rows[i][h] * static_cast<float>(me + 1);
  }
  Tensor y({T, H});
  int64_t combine_bytes = -1;
  status = tensor_partial ? dispatcher.Combine(t, received, own_partial, &y, &combine_bytes, Deadline::InSeconds(30))
                          : dispatcher.Combine(t, received, partial, &y, &combine_bytes, Deadline::InSeconds(30));
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return false;
  EXPECT_EQ(combine_bytes, (R - received.recv_tokens[me]) * H * 4);
  mismatches = 0;
  for (int64_t tok = 0; tok < T; ++tok) {
    float factor = 0;
    for (int d = 0; d < world; ++d) factor += layout.is_token_in_rank[tok * world + d] ? static_cast<float>(d + 1) : 0;
    for (int64_t h = 0; h < H && mismatches < 5; ++h) {
      if (y.row(tok)[h] != Value(me, tok, h) * factor) {
        ++mismatches;
        ADD_FAILURE() << "rank " << me << ": combined token " << tok << ", h " << h << " is " << y.row(tok)[h] << " ("
                      << Value(me, tok, h) * factor << " expected)";
      }
    }
  }
  return true;
}

}  // namespace moex::ep::testing
