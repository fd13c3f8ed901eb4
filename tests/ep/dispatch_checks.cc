#include "dispatch_checks.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <thread>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"
#include "moex/kernels/fp8_rows.h"
#include "moex/placement/placement.h"
#include "moex/transport/inprocess_transport.h"

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

namespace {

// What rank `me` routes in `c`: its tokens (valued by Value, or with
// `fractional` values that make the order of sums show), their experts and
// weights, and the layout.
struct Inputs {
  Placement placement;
  std::vector<int64_t> first_token = {};  // [W + 1] global index of each rank's first token
  Tensor x = {};                          // [T, H]
  std::vector<int32_t> topk_idx = {};     // [T, k]
  std::vector<float> topk_weights = {};   // [T, k]
  DispatchLayout layout = {};
};

std::optional<Inputs> MakeInputs(const DispatchCase& c, int world, int me, int seed, bool fractional) {
  const int64_t H = c.hidden, k = c.top_k;
  Inputs in{.placement = *Placement::Contiguous(c.experts, world, c.redundant)};
  in.first_token.assign(world + 1, 0);
  for (int r = 0; r < world; ++r) in.first_token[r + 1] = in.first_token[r] + c.tokens[r];
  const int64_t T = c.tokens[me];
  in.x = Tensor({T, H});
  in.topk_idx.resize(T * k);
  in.topk_weights.resize(T * k);
  for (int64_t tok = 0; tok < T; ++tok) {
    for (int64_t h = 0; h < H; ++h) {
      in.x.row(tok)[h] = fractional ? Value(me, tok, h) * 0.0011f + 0.1f * static_cast<float>(h % 7) : Value(me, tok, h);
    }
    std::vector<int32_t> picked = Route(c, in.placement, me, tok, seed);
    if (static_cast<int64_t>(picked.size()) < k) {
      ADD_FAILURE() << c.name << ": fewer than top-k experts to pick from";
      return std::nullopt;
    }
    for (int64_t j = 0; j < k; ++j) {
      in.topk_idx[tok * k + j] = picked[j];
      in.topk_weights[tok * k + j] = Weight(j);
    }
  }
  in.layout = GetDispatchLayout(in.placement, in.topk_idx.data(), T, k, in.first_token[me]);
  return in;
}

}  // namespace

bool CheckDispatchAndCombine(transport::Transport& t, Dispatcher& dispatcher, const DispatchCase& c, int seed,
                             bool tensor_partial, const HostSplit* split) {
  const int world = t.world_size(), me = t.rank();
  const int64_t H = c.hidden, k = c.top_k;
  std::optional<Inputs> in = MakeInputs(c, world, me, seed, /*fractional=*/false);
  if (!in) return false;
  const Placement& placement = in->placement;
  const std::vector<int64_t>& first_token = in->first_token;
  const Tensor& x = in->x;
  const std::vector<float>& topk_weights = in->topk_weights;
  const DispatchLayout& layout = in->layout;

  // What each rank routes (every rank can compute every rank's).
  auto slots_of = [&](int source, int64_t token) {
    std::vector<int64_t> slots;
    for (int32_t e : Route(c, placement, source, token, seed)) {
      slots.push_back(placement.ChooseSlot(e, first_token[source] + token));
    }
    return slots;
  };
  const int64_t T = c.tokens[me];

  DispatchResult received;
  absl::Status status =
      dispatcher.Dispatch(t, placement, x, layout, topk_weights.data(), Deadline::InSeconds(30), &received);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return false;

  // The rows expected, in order, each with the rank it is filed under:
  // source-rank-major on the flat paths; on the hierarchical path
  // gateway-major (the ranks of this host), each gateway's rows by the rank
  // they came from.
  struct Expected {
    int via, source;
    int64_t token;
  };
  const bool hierarchical = received.path == DispatchPath::kHierarchical;
  std::vector<int> host_of(world, 0);
  if (split != nullptr) host_of = split->host_of;
  auto ranks_on = [&](int h) {
    std::vector<int> on;
    for (int r = 0; r < world; ++r) {
      if (host_of[r] == h) on.push_back(r);
    }
    return on;
  };
  // The gateway of `source` on host h: the rank of h at the source's local
  // index, modulo h's size.
  auto gateway = [&](int source, int h) {
    if (host_of[source] == h) return source;
    const std::vector<int> mine = ranks_on(host_of[source]), theirs = ranks_on(h);
    const int index = static_cast<int>(std::find(mine.begin(), mine.end(), source) - mine.begin());
    return theirs[index % theirs.size()];
  };
  auto chose = [&](int source, int64_t token, int d) {
    std::vector<int64_t> slots = slots_of(source, token);
    return std::any_of(slots.begin(), slots.end(), [&](int64_t slot) { return placement.slot_rank(slot) == d; });
  };
  std::vector<Expected> expected;
  for (int via = 0; via < world; ++via) {
    if (hierarchical && host_of[via] != host_of[me]) continue;
    for (int s = 0; s < world; ++s) {
      if (hierarchical ? gateway(s, host_of[me]) != via : s != via) continue;
      for (int64_t tok = 0; tok < c.tokens[s]; ++tok) {
        if (chose(s, tok, me)) expected.push_back({via, s, tok});
      }
    }
  }

  EXPECT_EQ(DispatchPathName(received.path), dispatcher.path());
  if (!hierarchical) {
    EXPECT_EQ(received.send_tokens, layout.num_tokens_per_rank);
  }
  const int64_t local_slots = placement.num_local_slots(me), my_first_slot = placement.first_slot(me);
  std::vector<int64_t> per_slot(local_slots, 0), from(world, 0);
  int64_t mismatches = 0;
  for (int64_t row = 0; row < static_cast<int64_t>(expected.size()); ++row) {
    const auto [via, s, tok] = expected[row];
    if (from[via]++ == 0) {
      EXPECT_EQ(received.first_row_from(via), row) << "rows from rank " << via;
    }
    if (row >= received.num_recv()) continue;
    const float* got = received.recv_rows[row];
    if (s == me) {
      EXPECT_EQ(got, x.row(tok)) << "own token " << tok << " was copied";
    }
    for (int64_t h = 0; h < H && mismatches < 5; ++h) {
      if (got[h] != Value(s, tok, h)) {
        ++mismatches;
        ADD_FAILURE() << "rank " << me << " row " << row << ": expected token " << tok << " of rank " << s
                      << " (by rank " << via << "), h " << h << " is " << got[h] << " (" << Value(s, tok, h)
                      << " expected)";
      }
    }
    const std::vector<int64_t> slots = slots_of(s, tok);
    for (int64_t j = 0; j < k; ++j) {
      const bool here = placement.slot_rank(slots[j]) == me;
      const int32_t want = here ? static_cast<int32_t>(slots[j] - my_first_slot) : -1;
      EXPECT_EQ(received.recv_local_slot[row * k + j], want) << "row " << row << " pair " << j;
      EXPECT_EQ(received.recv_weights[row * k + j], here ? Weight(j) : 0.0f) << "row " << row << " pair " << j;
      if (here) ++per_slot[want];
    }
  }
  for (int r = 0; r < world; ++r) EXPECT_EQ(received.recv_tokens[r], from[r]) << "rows from rank " << r;
  EXPECT_EQ(received.num_recv(), static_cast<int64_t>(expected.size()));
  EXPECT_EQ(received.num_recv_tokens_per_expert, per_slot);

  // Bytes: a record is H + 2k values. Flat: one per (token, other rank).
  // Hierarchical: one per (token, remote host) over the network, and one
  // per (item, other rank of this host) that this rank forwards, its own
  // tokens and those it is the gateway of. The floor: distinct (token,
  // remote host) pairs x H x 4.
  const int64_t record_bytes = (H + 2 * k) * 4;
  int64_t floor_rows = 0, network_rows = 0, local_rows = 0, forwarded = 0;
  for (int64_t tok = 0; tok < T; ++tok) {
    std::vector<int> hosts_chosen;
    for (int d = 0; d < world; ++d) {
      if (layout.is_token_in_rank[tok * world + d] && host_of[d] != host_of[me] &&
          std::find(hosts_chosen.begin(), hosts_chosen.end(), host_of[d]) == hosts_chosen.end()) {
        hosts_chosen.push_back(host_of[d]);
      }
    }
    floor_rows += static_cast<int64_t>(hosts_chosen.size());
  }
  if (hierarchical) {
    network_rows = floor_rows;
    for (int s = 0; s < world; ++s) {
      if (gateway(s, host_of[me]) != me) continue;
      for (int64_t tok = 0; tok < c.tokens[s]; ++tok) {
        bool any = false;
        for (int d : ranks_on(host_of[me])) {
          if (!chose(s, tok, d)) continue;
          any = true;
          if (d != me) ++local_rows;
        }
        if (s != me && any) ++forwarded;
      }
    }
  } else {
    for (int d = 0; d < world; ++d) {
      if (d == me) continue;
      (host_of[d] == host_of[me] ? local_rows : network_rows) += layout.num_tokens_per_rank[d];
    }
  }
  EXPECT_EQ(received.bytes_sent, (network_rows + local_rows) * record_bytes);
  EXPECT_EQ(received.internode_bytes_sent, network_rows * record_bytes);
  EXPECT_EQ(received.internode_floor_bytes, floor_rows * H * 4);

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
  EXPECT_EQ(combine_bytes, (R - received.recv_tokens[me] + forwarded) * H * 4);
  int64_t combine_network_rows = forwarded;
  for (int r = 0; r < world && !hierarchical; ++r) {
    if (host_of[r] != host_of[me]) combine_network_rows += received.recv_tokens[r];
  }
  EXPECT_EQ(dispatcher.last_combine_internode_bytes(), combine_network_rows * H * 4);
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

std::optional<Tensor> CombinedOutput(transport::Transport& t, Dispatcher& dispatcher, const DispatchCase& c,
                                     int seed, bool read_back_fp8) {
  const int me = t.rank();
  std::optional<Inputs> in = MakeInputs(c, t.world_size(), me, seed, /*fractional=*/true);
  if (!in) return std::nullopt;
  Tensor rows = in->x;
  if (read_back_fp8) {
    const int64_t T = rows.dim(0), H = rows.dim(1), blocks = kernels::Fp8RowScales(H);
    std::vector<uint8_t> q(T * H);
    std::vector<float> scales(T * blocks);
    kernels::QuantizeRowsFp8(in->x.data(), T, H, q.data(), scales.data());
    for (int64_t i = 0; i < T; ++i) kernels::DequantizeRowFp8(&q[i * H], &scales[i * blocks], H, rows.row(i));
  }
  DispatchResult received;
  absl::Status status = dispatcher.Dispatch(t, in->placement, rows, in->layout, in->topk_weights.data(),
                                            Deadline::InSeconds(30), &received);
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return std::nullopt;
  // The experts' stand-in: a product that rounds, different on each rank.
  const int64_t H = c.hidden, R = received.num_recv();
  float* partial = dispatcher.PartialBuffer(received);
  const float scale = 0.3f + 0.17f * static_cast<float>(me);
  for (int64_t i = 0; i < R; ++i) {
    for (int64_t h = 0; h < H; ++h) partial[i * H + h] = received.recv_rows[i][h] * scale + 0.01f * static_cast<float>(i);
  }
  // y starts as the token itself (the shared expert's stand-in), so that
  // the first addition rounds too.
  Tensor y = in->x;
  int64_t bytes = 0;
  status = dispatcher.Combine(t, received, partial, &y, &bytes, Deadline::InSeconds(30));
  EXPECT_TRUE(status.ok()) << status;
  if (!status.ok()) return std::nullopt;
  return y;
}

int HostSplit::num_hosts() const {
  return host_of.empty() ? 0 : *std::max_element(host_of.begin(), host_of.end()) + 1;
}

DispatchPath HostSplit::AutoPath(bool flat) const {
  const int world = static_cast<int>(host_of.size());
  if (world == 1) return DispatchPath::kAllToAllV;  // nothing crosses
  if (num_hosts() == 1) return DispatchPath::kSharedMemory;
  if (num_hosts() == world) return DispatchPath::kAllToAllV;
  return flat ? DispatchPath::kPerPeer : DispatchPath::kHierarchical;
}

std::string HierarchicalReason(const std::string& where, const std::string& segments) {
  return StrCat("hierarchical: one row per (token, remote host) by all-to-all-v, forwarded within a host through "
                "shared memory: ", where, ", ", segments);
}

std::string HostSplit::Describe(const std::string& host_name) const {
  const int world = static_cast<int>(host_of.size());
  const std::string ranks = StrCat(world, world == 1 ? " rank" : " ranks");
  if (num_hosts() == 1) return StrCat(ranks, " on one host (", host_name, ")");
  std::vector<std::string> hosts;
  for (int h = 0; h < num_hosts(); ++h) {
    std::vector<int> on;
    for (int r = 0; r < world; ++r) {
      if (host_of[r] == h) on.push_back(r);
    }
    hosts.push_back(StrCat(host_name, on.size() == 1 ? " (rank " : " (ranks ", absl::StrJoin(on, ", "), ")"));
  }
  return StrCat(ranks, " on ", num_hosts(), " hosts: ", absl::StrJoin(hosts, ", "));
}

std::vector<HostSplit> HostSplits(int world) {
  std::vector<std::vector<int>> splits;
  splits.push_back(std::vector<int>(world, 0));  // one host
  if (world > 1) {
    std::vector<int> alone(world);
    std::iota(alone.begin(), alone.end(), 0);
    splits.push_back(alone);
  }
  if (world == 3) splits.push_back({0, 0, 1});
  if (world == 4) {
    splits.push_back({0, 0, 1, 1});
    splits.push_back({0, 1, 0, 1});
  }
  if (world == 5) {
    splits.push_back({0, 0, 0, 1, 2});
    splits.push_back({0, 1, 1, 0, 2});
  }
  std::vector<HostSplit> out;
  for (std::vector<int>& host_of : splits) {
    out.push_back({.name = absl::StrJoin(host_of, ""), .host_of = std::move(host_of)});
  }
  return out;
}

HostDirectories::HostDirectories(HostSplit split) : split_(std::move(split)) {
  char base[] = "/dev/shm/moex-dispatch-test-XXXXXX";
  if (mkdtemp(base) == nullptr) {
    ADD_FAILURE() << "cannot make a directory in /dev/shm";
    return;
  }
  base_ = base;
  owned_ = true;
  for (int h = 0; h < split_.num_hosts(); ++h) std::filesystem::create_directory(of_host(h));
}

HostDirectories::~HostDirectories() {
  if (!owned_) return;
  for (int h = 0; h < split_.num_hosts(); ++h) {
    EXPECT_TRUE(std::filesystem::is_empty(of_host(h))) << "files were left in " << of_host(h);
  }
  std::filesystem::remove_all(base_);
}

std::string HostDirectories::of_host(int host) const { return StrCat(base_, "/host", host); }

DispatchOptions HostDirectories::options(int rank, DispatchPath path) const {
  return DispatchOptions{.path = path, .shared_memory = {.directory = of(rank)}};
}

std::string HostDirectories::Segments() const {
  if (split_.num_hosts() == 1) return StrCat("segments in ", of_host(0));
  std::vector<std::string> parts;
  for (int h = 0; h < split_.num_hosts(); ++h) {
    std::vector<int> on;
    for (int r = 0; r < static_cast<int>(split_.host_of.size()); ++r) {
      if (split_.host_of[r] == h) on.push_back(r);
    }
    parts.push_back(StrCat(of_host(h), on.size() == 1 ? " (rank " : " (ranks ", absl::StrJoin(on, ", "), ")"));
  }
  return StrCat("segments in ", absl::StrJoin(parts, ", "));
}

std::string ThisHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

void OnEveryRank(int world, const std::function<void(int, transport::Transport&)>& body) {
  transport::InProcessHub hub(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&hub, &body, r] {
      std::unique_ptr<transport::Transport> t = hub.Connect(r);
      body(r, *t);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

std::vector<std::tuple<DispatchCase, HostSplit>> CasesOnEveryHostSplit() {
  std::vector<std::tuple<DispatchCase, HostSplit>> out;
  for (const DispatchCase& c : DispatchCases()) {
    for (const HostSplit& split : HostSplits(static_cast<int>(c.tokens.size()))) out.emplace_back(c, split);
  }
  return out;
}

}  // namespace moex::ep::testing
