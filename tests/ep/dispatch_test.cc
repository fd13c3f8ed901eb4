// Dispatch and combine on in-process ranks (threads), on every path: the
// order and content of the rows each rank receives and of the sums that
// come back (dispatch_checks.h), over uneven counts, ranks without tokens,
// a rank nobody sends to, replicas, and buffers reused as sizes change;
// the per-peer path over every split of the ranks into "hosts" (a segment
// directory per host); and every path giving the same bits. Then how the
// path is chosen: kAuto takes shared memory on one host, per peer on
// several hosts with some shared, all-to-all-v when every rank is alone,
// and falls back, every rank alike and saying why, when the segment
// directory fails or is full or a segment cannot grow; kSharedMemory and
// kPerPeer make each of those an error naming the rank; ranks that ask for
// different paths are told so.
#include "moex/ep/dispatch.h"

#include <sys/mount.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <thread>

#include "absl/strings/str_join.h"
#include "dispatch_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::ep {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::CheckDispatchAndCombine;
using testing::CombinedOutput;
using testing::DispatchCase;
using testing::HostDirectories;
using testing::HostSplit;
using testing::HostSplits;
using testing::OnEveryRank;
using testing::ThisHostName;

// What Create gave each rank: the path and reason, or the error.
struct Created {
  absl::Status status;
  std::string path, reason;
};

// Creates a dispatcher on every rank (options per rank) and, where that
// worked, runs `rounds` dispatches of `c` with it, round r on `cases[r]`.
std::vector<Created> CreateAndRun(int world, const std::function<DispatchOptions(int)>& options_of,
                                  const std::vector<DispatchCase>& rounds = {}, const HostSplit* split = nullptr) {
  std::vector<Created> created(world);
  OnEveryRank(world, [&](int r, transport::Transport& t) {
    absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(t, options_of(r), Deadline::InSeconds(30));
    created[r].status = dispatcher.status();
    if (!dispatcher.ok()) return;
    for (size_t round = 0; round < rounds.size(); ++round) {
      SCOPED_TRACE(::testing::Message() << "rank " << r << ", round " << round);
      if (!CheckDispatchAndCombine(t, *dispatcher, rounds[round], static_cast<int>(round), false, split)) break;
    }
    created[r].path = std::string(dispatcher->path());
    created[r].reason = dispatcher->path_reason();
  });
  return created;
}

// Every rank got the same path and the same reason.
void ExpectAgreement(const std::vector<Created>& created) {
  for (size_t r = 1; r < created.size(); ++r) {
    EXPECT_EQ(created[r].path, created[0].path) << "rank " << r;
    EXPECT_EQ(created[r].reason, created[0].reason) << "rank " << r;
  }
}

// ---------------------------------------------------------------------------
// One contract on every path.

// A case on a path; on the per-peer path, with the ranks split over hosts
// (shared memory and all-to-all-v use /dev/shm, one host).
struct PathCase {
  DispatchCase c;
  DispatchPath path;
  HostSplit split;
  std::string name() const {
    switch (path) {
      case DispatchPath::kSharedMemory: return c.name + "_shared";
      case DispatchPath::kAllToAllV: return c.name + "_alltoallv";
      case DispatchPath::kPerPeer: return c.name + "_perpeer_hosts" + split.name;
      case DispatchPath::kHierarchical: return c.name + "_hierarchical_hosts" + split.name;
      case DispatchPath::kAuto: break;
    }
    return c.name + "_auto";
  }
};
void PrintTo(const PathCase& p, std::ostream* os) { *os << p.name(); }

class DispatchPathTest : public ::testing::TestWithParam<PathCase> {};

TEST_P(DispatchPathTest, DeliversInSourceRankOrderAndCombinesBack) {
  const PathCase& p = GetParam();
  const DispatchCase& c = p.c;
  const int world = static_cast<int>(c.tokens.size());
  std::optional<HostDirectories> hosts;
  const bool split_hosts = p.path == DispatchPath::kPerPeer || p.path == DispatchPath::kHierarchical;
  if (split_hosts) hosts.emplace(p.split);
  // Three rounds: the case, twice as many tokens (buffers grow), the case
  // again with the partial sums in a Tensor of their own.
  DispatchCase bigger = c;
  for (int64_t& n : bigger.tokens) n *= 2;
  OnEveryRank(world, [&](int r, transport::Transport& t) {
    const DispatchOptions options = hosts ? hosts->options(r, p.path) : DispatchOptions{.path = p.path};
    absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(t, options, Deadline::InSeconds(30));
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    EXPECT_EQ(dispatcher->path(), DispatchPathName(p.path));
    EXPECT_THAT(dispatcher->path_reason(), StartsWith(StrCat(DispatchPathName(p.path), ": ")));
    const std::string where = p.split.Describe(ThisHostName());
    if (p.path == DispatchPath::kPerPeer) {
      EXPECT_EQ(dispatcher->path_reason(), StrCat("per peer: shared memory within a host, all-to-all-v between "
                                                  "hosts: ", where, ", ", hosts->Segments()));
    } else if (p.path == DispatchPath::kHierarchical) {
      EXPECT_EQ(dispatcher->path_reason(), testing::HierarchicalReason(where, hosts->Segments()));
    }
    SCOPED_TRACE(::testing::Message() << "rank " << r);
    const HostSplit* split = split_hosts ? &p.split : nullptr;
    if (!CheckDispatchAndCombine(t, *dispatcher, c, 0, false, split)) return;
    if (!CheckDispatchAndCombine(t, *dispatcher, bigger, 1, false, split)) return;
    CheckDispatchAndCombine(t, *dispatcher, c, 2, /*tensor_partial=*/true, split);
  });
}

std::vector<PathCase> PathCases() {
  std::vector<PathCase> out;
  for (const DispatchCase& c : testing::DispatchCases()) {
    const std::vector<HostSplit> splits = HostSplits(static_cast<int>(c.tokens.size()));
    for (DispatchPath path : {DispatchPath::kSharedMemory, DispatchPath::kAllToAllV}) {
      out.push_back({c, path, splits.front()});
    }
    for (const HostSplit& split : splits) {
      out.push_back({c, DispatchPath::kPerPeer, split});
      out.push_back({c, DispatchPath::kHierarchical, split});
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, DispatchPathTest, ::testing::ValuesIn(PathCases()),
                         [](const ::testing::TestParamInfo<PathCase>& param_info) { return param_info.param.name(); });

// ---------------------------------------------------------------------------
// The same bits on every flat path: one row order, the sums added in rank
// order. (The hierarchical path orders rows by gateway and adds a host's
// sums first: its rows and sums are checked exactly on integer values by
// CheckDispatchAndCombine, and against the flat paths by the MoE layer's
// tests.)

class DispatchBitsTest : public ::testing::TestWithParam<std::tuple<DispatchCase, HostSplit>> {};

TEST_P(DispatchBitsTest, EveryPathGivesTheSameBits) {
  const auto& [c, split] = GetParam();
  const int world = static_cast<int>(c.tokens.size());
  DispatchCase bigger = c;
  for (int64_t& n : bigger.tokens) n *= 2;
  HostDirectories hosts(split);
  // Each rank's output of two rounds, on each path.
  const std::vector<std::pair<std::string, std::function<DispatchOptions(int)>>> paths = {
      {"shared memory", [](int) { return DispatchOptions{.path = DispatchPath::kSharedMemory}; }},
      {"all-to-all-v", [](int) { return DispatchOptions{.path = DispatchPath::kAllToAllV}; }},
      {"per peer", [&](int r) { return hosts.options(r, DispatchPath::kPerPeer); }},
      {"auto (flat)",
       [&](int r) {
         DispatchOptions options = hosts.options(r, DispatchPath::kAuto);
         options.flat = true;
         return options;
       }},
  };
  std::vector<std::vector<std::vector<Tensor>>> outputs(paths.size(), std::vector<std::vector<Tensor>>(world));
  for (size_t p = 0; p < paths.size(); ++p) {
    OnEveryRank(world, [&](int r, transport::Transport& t) {
      absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(t, paths[p].second(r), Deadline::InSeconds(30));
      ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
      for (const DispatchCase& round : {c, bigger}) {
        std::optional<Tensor> y = CombinedOutput(t, *dispatcher, round, static_cast<int>(outputs[p][r].size()));
        if (!y) return;
        outputs[p][r].push_back(std::move(*y));
      }
    });
  }
  for (size_t p = 1; p < paths.size(); ++p) {
    for (int r = 0; r < world; ++r) {
      ASSERT_EQ(outputs[p][r].size(), outputs[0][r].size()) << paths[p].first << ", rank " << r;
      for (size_t round = 0; round < outputs[0][r].size(); ++round) {
        const std::vector<float>& want = outputs[0][r][round].values;
        const std::vector<float>& got = outputs[p][r][round].values;
        ASSERT_EQ(got.size(), want.size());
        EXPECT_TRUE(want.empty() || std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0)
            << paths[p].first << " and shared memory disagree on rank " << r << ", round " << round;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, DispatchBitsTest, ::testing::ValuesIn(testing::CasesOnEveryHostSplit()),
                         [](const ::testing::TestParamInfo<std::tuple<DispatchCase, HostSplit>>& param_info) {
                           return std::get<0>(param_info.param).name + "_hosts" + std::get<1>(param_info.param).name;
                         });

TEST(DispatchFp8Test, RanksThatAskForDifferentDtypesAreToldOnEveryRank) {
  std::vector<Created> created = CreateAndRun(2, [](int r) {
    return DispatchOptions{.dtype = r == 1 ? DispatchDtype::kFp8 : DispatchDtype::kFp32};
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(std::string(created[r].status.message()),
                HasSubstr("the ranks ask for different paths or dtypes (rank 0 auto, rank 1 auto fp8)"));
  }
}

// ---------------------------------------------------------------------------
// Choosing the path.

DispatchCase FourRanks() { return testing::DispatchCases(4).front(); }

TEST(DispatchChoiceTest, AutoTakesSharedMemoryWhenEveryRankSharesTheDirectory) {
  std::vector<Created> created = CreateAndRun(4, [](int) { return DispatchOptions{}; }, {FourRanks()});
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].path, "shared memory");
  EXPECT_THAT(created[0].reason, AllOf(StartsWith("shared memory: 4 ranks on one host ("), HasSubstr("/dev/shm")));
  ExpectAgreement(created);
}

TEST(DispatchChoiceTest, AutoOnOneRankIsAllToAllV) {
  std::vector<Created> created = CreateAndRun(1, [](int) { return DispatchOptions{}; });
  ASSERT_TRUE(created[0].status.ok()) << created[0].status;
  EXPECT_EQ(created[0].path, "all-to-all-v");
  EXPECT_EQ(created[0].reason, "all-to-all-v: one rank, nothing crosses between ranks");
}

TEST(DispatchChoiceTest, AllToAllVWhenAskedFor) {
  std::vector<Created> created =
      CreateAndRun(3, [](int) { return DispatchOptions{.path = DispatchPath::kAllToAllV}; });
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].reason, "all-to-all-v: asked for");
  ExpectAgreement(created);
}

// Every split of 2 to 5 ranks over hosts: kAuto takes shared memory on one
// host, hierarchical where some host has two ranks or more (per peer where
// asked to be flat), all-to-all-v where
// every rank is alone; every rank alike, saying where the ranks are; and
// the path it took delivers.
TEST(DispatchChoiceTest, AutoChoosesByWhereTheRanksAre) {
  for (bool flat : {false, true}) {
    for (int world = 2; world <= 5; ++world) {
      for (const HostSplit& split : HostSplits(world)) {
        SCOPED_TRACE(StrCat(world, " ranks on hosts ", split.name, flat ? ", flat" : ""));
        HostDirectories hosts(split);
        std::vector<Created> created = CreateAndRun(
            world,
            [&](int r) {
              DispatchOptions options = hosts.options(r, DispatchPath::kAuto);
              options.flat = flat;
              return options;
            },
            testing::DispatchCases(world), &split);
        for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
        const std::string where = split.Describe(ThisHostName());
        EXPECT_EQ(created[0].path, DispatchPathName(split.AutoPath(flat)));
        switch (split.AutoPath(flat)) {
          case DispatchPath::kSharedMemory:
            EXPECT_EQ(created[0].reason, StrCat("shared memory: ", where, ", ", hosts.Segments()));
            break;
          case DispatchPath::kPerPeer:
            EXPECT_EQ(created[0].reason, StrCat("per peer: shared memory within a host, all-to-all-v between hosts: ",
                                                where, ", ", hosts.Segments()));
            break;
          case DispatchPath::kHierarchical:
            EXPECT_EQ(created[0].reason, testing::HierarchicalReason(where, hosts.Segments()));
            break;
          default:
            EXPECT_EQ(created[0].reason, StrCat("all-to-all-v: every rank is alone on its host (", where, ")"));
        }
        ExpectAgreement(created);
      }
    }
  }
}

TEST(DispatchChoiceTest, SharedMemoryOnSeveralHostsIsAnErrorOnEveryRank) {
  const HostSplit split = HostSplits(4)[2];  // {0, 1}, {2, 3}
  HostDirectories hosts(split);
  std::vector<Created> created = CreateAndRun(4, [&](int r) { return hosts.options(r, DispatchPath::kSharedMemory); });
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(created[r].status.code(), absl::StatusCode::kFailedPrecondition) << created[r].status;
    EXPECT_THAT(std::string(created[r].status.message()),
                AllOf(StartsWith(StrCat("dispatch on rank ", r, ": the shared-memory path was asked for")),
                      HasSubstr(StrCat("not every rank shares ", hosts.of(r), ": ",
                                       split.Describe(ThisHostName())))));
  }
}

// Rank 2's segment directory does not exist: it can share nothing.
DispatchOptions MissingDirectoryOnRank2(int rank, DispatchPath path) {
  DispatchOptions options{.path = path};
  if (rank == 2) options.shared_memory.directory = "/nonexistent-moex-dispatch-test";
  return options;
}

TEST(DispatchChoiceTest, AutoFallsBackWhenARankCannotMakeItsSegmentFile) {
  const HostSplit rank2_alone{.name = "0010", .host_of = {0, 0, 1, 0}};  // it could not probe
  std::vector<Created> created = CreateAndRun(
      4, [](int r) { return MissingDirectoryOnRank2(r, DispatchPath::kAuto); }, {FourRanks()}, &rank2_alone);
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].path, "all-to-all-v");
  EXPECT_THAT(created[0].reason,
              AllOf(StartsWith("all-to-all-v: rank 2 cannot make /nonexistent-moex-dispatch-test/"),
                    HasSubstr("No such file or directory"), HasSubstr("fell back")));
  ExpectAgreement(created);
}

TEST(DispatchChoiceTest, SharedMemoryThatCannotBeSetUpIsAnErrorOnEveryRank) {
  std::vector<Created> created =
      CreateAndRun(4, [](int r) { return MissingDirectoryOnRank2(r, DispatchPath::kSharedMemory); });
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(created[r].status.code(), absl::StatusCode::kFailedPrecondition) << created[r].status;
    EXPECT_THAT(std::string(created[r].status.message()),
                AllOf(StartsWith(StrCat("dispatch on rank ", r, ": the shared-memory path was asked for")),
                      HasSubstr("rank 2 cannot make"), HasSubstr("No such file or directory")));
  }
}

TEST(DispatchChoiceTest, PerPeerOrHierarchicalThatCannotBeSetUpIsAnErrorOnEveryRank) {
  for (const auto& [path, words] : {std::pair{DispatchPath::kPerPeer, "per-peer"},
                                    std::pair{DispatchPath::kHierarchical, "hierarchical"}}) {
    const DispatchPath asked = path;
    std::vector<Created> created = CreateAndRun(4, [asked](int r) { return MissingDirectoryOnRank2(r, asked); });
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(created[r].status.code(), absl::StatusCode::kFailedPrecondition) << created[r].status;
      EXPECT_THAT(std::string(created[r].status.message()),
                  AllOf(StartsWith(StrCat("dispatch on rank ", r, ": the ", words, " path was asked for")),
                        HasSubstr("rank 2 cannot make"), HasSubstr("No such file or directory")));
    }
  }
}

// Ranks on two hosts, {0, 1} and {2, 3}, and rank 3's directory missing:
// the probe fails, and every rank falls back to all-to-all-v.
TEST(DispatchChoiceTest, AutoOnSeveralHostsFallsBackWhenARankCannotProbe) {
  HostDirectories hosts(HostSplits(4)[2]);
  const HostSplit rank3_alone{.name = "0012", .host_of = {0, 0, 1, 2}};  // it could not probe
  std::vector<Created> created = CreateAndRun(
      4,
      [&](int r) {
        DispatchOptions options = hosts.options(r, DispatchPath::kAuto);
        if (r == 3) options.shared_memory.directory = "/nonexistent-moex-dispatch-test";
        return options;
      },
      {FourRanks()}, &rank3_alone);
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].path, "all-to-all-v");
  EXPECT_THAT(created[0].reason, AllOf(StartsWith("all-to-all-v: rank 3 cannot make /nonexistent-moex-dispatch-test/"),
                                       HasSubstr("fell back")));
  ExpectAgreement(created);
}

// A small tmpfs (what a full /dev/shm looks like), where this process may
// mount one; the test skips where it may not.
class TinyTmpfs {
 public:
  TinyTmpfs() {
    char path[] = "/tmp/moex-tiny-shm-XXXXXX";
    if (mkdtemp(path) == nullptr) return;
    path_ = path;
    mounted_ = mount("tmpfs", path, "tmpfs", 0, "size=64k") == 0;
  }
  ~TinyTmpfs() {
    if (mounted_) umount(path_.c_str());
    if (!path_.empty()) rmdir(path_.c_str());
  }
  bool mounted() const { return mounted_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool mounted_ = false;
};

TEST(DispatchChoiceTest, AutoFallsBackFromAFullSegmentDirectory) {
  TinyTmpfs tmpfs;
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (needs CAP_SYS_ADMIN)";
  auto options = [&](DispatchPath path) {
    return [&tmpfs, path](int) { return DispatchOptions{.path = path, .shared_memory = {.directory = tmpfs.path()}}; };
  };
  std::vector<Created> created = CreateAndRun(3, options(DispatchPath::kAuto), {testing::DispatchCases(3).front()});
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].path, "all-to-all-v");
  // Every rank failed alike: one line names them all.
  EXPECT_EQ(created[0].reason, StrCat("all-to-all-v: ", tmpfs.path(), " on ranks 0, 1, 2: No space left on device "
                                      "(making a 1.00 MiB segment), fell back"));
  ExpectAgreement(created);

  created = CreateAndRun(3, options(DispatchPath::kSharedMemory));
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(created[r].status.code(), absl::StatusCode::kFailedPrecondition) << created[r].status;
    EXPECT_THAT(std::string(created[r].status.message()), HasSubstr("No space left on device"));
  }
  // Nothing of either attempt is left in the directory.
  EXPECT_TRUE(std::filesystem::is_empty(tmpfs.path()));
}

// Rank 1's segment may not pass 64 KiB: the first round fits, the second
// (more tokens, a wider row) does not.
DispatchOptions SmallLimitOnRank1(int rank, DispatchPath path) {
  DispatchOptions options{.path = path};
  if (rank == 1) options.shared_memory.max_bytes = 64 << 10;
  return options;
}
DispatchCase Small() { return {.name = "small", .tokens = {6, 5, 4}, .experts = 6, .top_k = 2, .hidden = 16}; }
DispatchCase Large() { return {.name = "large", .tokens = {40, 50, 60}, .experts = 6, .top_k = 2, .hidden = 512}; }

TEST(DispatchChoiceTest, AutoFallsBackWhenSharedMemoryCannotGrowMidRun) {
  std::vector<Created> created =
      CreateAndRun(3, [](int r) { return SmallLimitOnRank1(r, DispatchPath::kAuto); }, {Small(), Large(), Small()});
  for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
  EXPECT_EQ(created[0].path, "all-to-all-v");
  EXPECT_THAT(created[0].reason, AllOf(StartsWith("all-to-all-v: /dev/shm on rank 1: a "),
                                       HasSubstr("over the 64.00 KiB limit"), HasSubstr("fell back at dispatch #2")));
  ExpectAgreement(created);
}

// Rank r's share of Large(), dispatched once (the round a segment cannot
// grow for).
absl::Status DispatchLarge(transport::Transport& t, Dispatcher& dispatcher, int r) {
  const DispatchCase large = Large();
  const Placement placement = *Placement::Contiguous(large.experts, 3);
  Tensor x({large.tokens[r], large.hidden});
  std::vector<int32_t> topk(large.tokens[r] * 2, 0);
  std::vector<float> weights(topk.size(), 0.5f);
  for (int64_t i = 0; i < large.tokens[r]; ++i) topk[2 * i + 1] = 3 + static_cast<int32_t>(i % 3);
  DispatchLayout layout = GetDispatchLayout(placement, topk.data(), large.tokens[r], 2, 0);
  DispatchResult received;
  return dispatcher.Dispatch(t, placement, x, layout, weights.data(), Deadline::InSeconds(30), &received);
}

TEST(DispatchChoiceTest, SharedMemoryThatCannotGrowIsAnErrorOnEveryRank) {
  std::vector<absl::Status> second(3);
  OnEveryRank(3, [&](int r, transport::Transport& t) {
    absl::StatusOr<Dispatcher> dispatcher =
        Dispatcher::Create(t, SmallLimitOnRank1(r, DispatchPath::kSharedMemory), Deadline::InSeconds(30));
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    ASSERT_TRUE(CheckDispatchAndCombine(t, *dispatcher, Small(), 0));
    // The second round's dispatch fails; see that it does, then stop.
    second[r] = DispatchLarge(t, *dispatcher, r);
    EXPECT_EQ(dispatcher->path(), "shared memory");
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(second[r].code(), absl::StatusCode::kResourceExhausted) << second[r];
    EXPECT_THAT(std::string(second[r].message()),
                AllOf(StartsWith(StrCat("dispatch on rank ", r, ": shared memory cannot grow for dispatch #2: ")),
                      HasSubstr("/dev/shm on rank 1: a "), HasSubstr("limit")));
  }
}

// Across hosts, flat (per peer) and hierarchical alike: rank 1's segment
// cannot grow mid-run; under kAuto every rank falls back to all-to-all-v,
// asked for by name it is an error on every rank.
TEST(DispatchChoiceTest, AutoFallsBackAcrossHostsWhenSegmentsCannotGrowMidRun) {
  for (bool flat : {true, false}) {
    SCOPED_TRACE(flat ? "flat" : "hierarchical");
    const HostSplit split = HostSplits(3)[2];  // {0, 1}, {2}
    HostDirectories hosts(split);
    std::vector<Created> created = CreateAndRun(
        3,
        [&](int r) {
          DispatchOptions options = hosts.options(r, DispatchPath::kAuto);
          options.flat = flat;
          options.shared_memory.max_bytes = SmallLimitOnRank1(r, DispatchPath::kAuto).shared_memory.max_bytes;
          return options;
        },
        {Small(), Large(), Small()}, &split);
    for (const Created& c : created) ASSERT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(created[0].path, "all-to-all-v");
    EXPECT_THAT(created[0].reason, AllOf(StartsWith(StrCat("all-to-all-v: ", hosts.of(1), " on rank 1: a ")),
                                         HasSubstr("over the 64.00 KiB limit"), HasSubstr("fell back at dispatch #2")));
    ExpectAgreement(created);
  }
}

TEST(DispatchChoiceTest, PerPeerOrHierarchicalThatCannotGrowIsAnErrorOnEveryRank) {
  for (DispatchPath path : {DispatchPath::kPerPeer, DispatchPath::kHierarchical}) {
    SCOPED_TRACE(DispatchPathName(path));
    const HostSplit split = HostSplits(3)[2];  // {0, 1}, {2}
    HostDirectories hosts(split);
    std::vector<absl::Status> second(3);
    OnEveryRank(3, [&](int r, transport::Transport& t) {
      DispatchOptions options = hosts.options(r, path);
      options.shared_memory.max_bytes = SmallLimitOnRank1(r, path).shared_memory.max_bytes;
      absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(t, options, Deadline::InSeconds(30));
      ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
      ASSERT_TRUE(CheckDispatchAndCombine(t, *dispatcher, Small(), 0, false, &split));
      // The second round's dispatch fails on every rank.
      second[r] = DispatchLarge(t, *dispatcher, r);
      EXPECT_EQ(dispatcher->path(), DispatchPathName(path));
    });
    for (int r = 0; r < 3; ++r) {
      EXPECT_EQ(second[r].code(), absl::StatusCode::kResourceExhausted) << second[r];
      EXPECT_THAT(std::string(second[r].message()),
                  AllOf(StartsWith(StrCat("dispatch on rank ", r, ": shared memory cannot grow for dispatch #2: ")),
                        HasSubstr(StrCat(hosts.of(1), " on rank 1: a ")), HasSubstr("limit")));
    }
  }
}

// A gateway gets rows it cannot forward as announced: rank 2 (alone on its
// host) routes with a placement that differs from everyone else's, so its
// records for host {0, 1} name other ranks than its counts said. Every rank
// fails, together and before anything is written, the gateway saying why.
TEST(DispatchChoiceTest, HierarchicalRefusesRowsThatDoNotMatchTheirCounts) {
  const HostSplit split = HostSplits(3)[2];  // {0, 1}, {2}
  HostDirectories hosts(split);
  std::vector<absl::Status> status(3);
  OnEveryRank(3, [&](int r, transport::Transport& t) {
    absl::StatusOr<Dispatcher> dispatcher =
        Dispatcher::Create(t, hosts.options(r, DispatchPath::kHierarchical), Deadline::InSeconds(30));
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    const Placement mine = *Placement::Contiguous(6, 3);
    // Rank 2's slot 0 "is" rank 1's in the layout it announces; its records
    // name slot 0, which the gateway's placement gives rank 0.
    const int64_t T = r == 2 ? 4 : 0;
    Tensor x({T, 8});
    std::vector<int32_t> topk(T, 0);
    std::vector<float> weights(T, 1.0f);
    DispatchLayout layout = GetDispatchLayout(mine, topk.data(), T, 1, 0);
    if (r == 2) {
      for (int64_t i = 0; i < T; ++i) {
        layout.is_token_in_rank[i * 3 + 0] = 0;
        layout.is_token_in_rank[i * 3 + 1] = 1;
      }
      layout.num_tokens_per_rank = {0, T, 0};
    }
    DispatchResult received;
    status[r] = dispatcher->Dispatch(t, mine, x, layout, weights.data(), Deadline::InSeconds(30), &received);
  });
  for (int r = 0; r < 3; ++r) EXPECT_EQ(status[r].code(), absl::StatusCode::kDataLoss) << "rank " << r << ": " << status[r];
  // Rank 2's gateway on host {0, 1} is rank 0 (local index 0).
  EXPECT_THAT(std::string(status[0].message()),
              HasSubstr("rank 2 sent 4 rows for rank 0 to forward, having announced 0"));
  EXPECT_THAT(std::string(status[1].message()), HasSubstr("rank 0 received rows it cannot forward"));
}

TEST(DispatchChoiceTest, RanksThatAskForDifferentPathsAreToldOnEveryRank) {
  std::vector<Created> created = CreateAndRun(3, [](int r) {
    return DispatchOptions{.path = r == 1 ? DispatchPath::kAllToAllV : DispatchPath::kAuto};
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(created[r].status.code(), absl::StatusCode::kInvalidArgument) << created[r].status;
    EXPECT_THAT(std::string(created[r].status.message()),
                HasSubstr("the ranks ask for different paths or dtypes (rank 0 auto, rank 1 all-to-all-v, rank 2 auto)"));
  }
  // Flat on one rank only.
  created = CreateAndRun(3, [](int r) { return DispatchOptions{.flat = r == 2}; });
  for (int r = 0; r < 3; ++r) {
    EXPECT_THAT(std::string(created[r].status.message()),
                HasSubstr("the ranks ask for different paths or dtypes (rank 0 auto, rank 1 auto, rank 2 auto (flat))"));
  }
}

TEST(DispatchChoiceTest, InvalidOptionsOnOneRankAreAnErrorOnEveryRank) {
  std::vector<Created> created = CreateAndRun(3, [](int r) {
    DispatchOptions options;
    if (r == 2) options.shared_memory.directory = "relative/dir";
    return options;
  });
  EXPECT_THAT(std::string(created[2].status.message()), HasSubstr("'relative/dir' is not an absolute path"));
  for (int r = 0; r < 2; ++r) {
    EXPECT_THAT(std::string(created[r].status.message()), HasSubstr("rank 2's dispatch options are invalid"));
  }
}

}  // namespace
}  // namespace moex::ep
