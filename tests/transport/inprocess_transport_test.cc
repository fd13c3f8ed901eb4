// The conformance suite on in-process ranks (threads), world sizes 1 to 6.
#include <unistd.h>

#include <filesystem>
#include <thread>
#include <vector>

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "moex/core/stop.h"
#include "moex/transport/inprocess_transport.h"
#include "moex/transport/shared_segments.h"
#include "transport_conformance.h"

namespace moex::transport {
namespace {

// Runs `body(transport)` on every rank of a fresh hub, one thread per rank.
template <typename Body>
void OnEveryRank(int world, Body body) {
  InProcessHub hub(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&hub, &body, r] {
      std::unique_ptr<Transport> transport = hub.Connect(r);
      body(*transport);
    });
  }
  for (std::thread& thread : threads) thread.join();
}

class InProcessConformanceTest : public ::testing::TestWithParam<int> {};

TEST_P(InProcessConformanceTest, PassesTheSuite) {
  OnEveryRank(GetParam(), [](Transport& t) { testing::RunConformance(t); });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, InProcessConformanceTest, ::testing::Range(1, 7));

TEST(InProcessTransportTest, MissingRankIsNamedOnEveryOtherRank) {
  OnEveryRank(4, [](Transport& t) { testing::CheckMissingRankIsNamed(t, 2); });
}

// SIGTERM (what a launcher sends before SIGKILL, e.g. when a host is lost)
// ends a wait at once with the ranks it waited for, and the process goes on
// to report it; a SIGTERM outside any wait still ends the process. In child
// processes (death tests): the stop is for the whole process.
[[noreturn]] void StopDuringAWait() {
  InstallStopHandler();
  absl::Status status;
  OnEveryRank(3, [&status](Transport& t) {
    if (t.rank() != 0) return;  // ranks 1 and 2 never come
    std::thread stopper([] {
      usleep(200000);
      kill(getpid(), SIGTERM);
    });
    status = t.Barrier(Deadline::InSeconds(30));
    stopper.join();
  });
  const std::vector<int> expected = {1, 2};
  const bool named = absl::IsAborted(status) && MissingRanks(status) == expected &&
                     absl::StrContains(status.message(), "waiting for rank(s) 1, 2");
  std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
  std::exit(named ? 0 : 1);
}

[[noreturn]] void StopOutsideAWait() {
  InstallStopHandler();
  kill(getpid(), SIGTERM);
  usleep(2000000);
  std::exit(0);
}

TEST(InProcessTransportStopTest, SigtermEndsAWaitNamingTheRanks) {
  EXPECT_EXIT(StopDuringAWait(), ::testing::ExitedWithCode(0), "stopped by SIGTERM after");
  EXPECT_EXIT(StopOutsideAWait(), ::testing::KilledBySignal(SIGTERM), "");
}

TEST(InProcessTransportTest, SizeMismatchIsDataLoss) {
  OnEveryRank(2, [](Transport& t) {
    std::vector<std::byte> buffer(16);
    if (t.rank() == 0) {
      ASSERT_TRUE(t.Send(1, buffer.data(), 16, 5, Deadline::InSeconds(5)).ok());
    } else {
      absl::Status status = t.Recv(0, buffer.data(), 8, 5, Deadline::InSeconds(5));
      EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
      EXPECT_NE(status.message().find("16 bytes where 8 were expected"), std::string::npos) << status;
    }
  });
}

}  // namespace
}  // namespace moex::transport

namespace moex::transport {
namespace {

// Shared segments: each rank writes its own, every rank reads every other
// one after a barrier; growing remaps everywhere; nothing stays in /dev/shm.
TEST(SharedSegmentsTest, EveryRankSeesEveryOthersWritesAcrossGrowth) {
  // A directory of its own in /dev/shm: other tests running beside this
  // one make (and unlink) their segments in /dev/shm itself.
  char directory[] = "/dev/shm/moex-segments-test-XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr);
  const int world = 3;
  InProcessHub hub(world);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Transport> t = hub.Connect(r);
      Deadline deadline = Deadline::InSeconds(10);
      auto shm = SharedSegments::Create(*t, {.directory = directory}, deadline);
      if (!shm.ok()) {
        errors[r] = std::string(shm.status().message());
        return;
      }
      for (int64_t bytes : {int64_t{4096}, int64_t{3} << 20}) {
        std::vector<int64_t> need(world, bytes);
        need[1] = bytes * 2;  // one rank needs more
        absl::Status reserved = (*shm)->Reserve(*t, need, deadline);
        if (!reserved.ok()) {
          errors[r] = std::string(reserved.message());
          return;
        }
        auto* own = reinterpret_cast<int64_t*>((*shm)->segment(r));
        const int64_t n = need[r] / 8;
        for (int64_t i = 0; i < n; ++i) own[i] = r * 1000003 + i + bytes;
        SharedSegments::Fence();
        if (!t->Barrier(deadline).ok()) return;
        SharedSegments::Fence();
        for (int p = 0; p < world; ++p) {
          const auto* peer = reinterpret_cast<const int64_t*>((*shm)->segment(p));
          if ((*shm)->size(p) < need[p]) errors[r] = "segment too small";
          for (int64_t i = 0; i < need[p] / 8; i += 997) {
            if (peer[i] != p * 1000003 + i + bytes) errors[r] = "rank " + std::to_string(p) + " mismatch";
          }
        }
        if (!t->Barrier(deadline).ok()) return;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  // Unlinked as soon as every rank mapped it: no segment is left.
  EXPECT_TRUE(std::filesystem::is_empty(directory)) << "segments were left in " << directory;
  std::filesystem::remove_all(directory);
}

// Ranks on two "hosts" (two directories: 0, 1 and 3 in one, 2 and 4 in
// the other): each maps only its host's segments, sees its host's writes
// across growth, knows every segment's size, and nothing stays behind.
TEST(SharedSegmentsTest, PeersOnOneHostMapOnlyEachOther) {
  char first[] = "/dev/shm/moex-segments-host0-XXXXXX";
  char second[] = "/dev/shm/moex-segments-host1-XXXXXX";
  ASSERT_NE(mkdtemp(first), nullptr);
  ASSERT_NE(mkdtemp(second), nullptr);
  const int world = 5;
  const std::vector<int> host_of = {0, 0, 1, 0, 1};
  InProcessHub hub(world);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Transport> t = hub.Connect(r);
      Deadline deadline = Deadline::InSeconds(10);
      std::vector<int> peers;
      for (int p = 0; p < world; ++p) {
        if (host_of[p] == host_of[r]) peers.push_back(p);
      }
      SharedSegmentsOptions options{.directory = host_of[r] == 0 ? first : second};
      auto shm = SharedSegments::Create(*t, options, peers, deadline);
      if (!shm.ok()) {
        errors[r] = std::string(shm.status().message());
        return;
      }
      for (int64_t bytes : {int64_t{4096}, int64_t{3} << 20}) {
        std::vector<int64_t> need(world, bytes);
        need[2] = bytes * 2;  // one rank needs more
        absl::Status reserved = (*shm)->Reserve(*t, need, deadline);
        if (!reserved.ok()) {
          errors[r] = std::string(reserved.message());
          return;
        }
        auto* own = reinterpret_cast<int64_t*>((*shm)->segment(r));
        for (int64_t i = 0; i < need[r] / 8; ++i) own[i] = r * 1000003 + i + bytes;
        SharedSegments::Fence();
        if (!t->Barrier(deadline).ok()) return;
        SharedSegments::Fence();
        for (int p = 0; p < world; ++p) {
          if ((*shm)->size(p) < need[p]) errors[r] = "segment of rank " + std::to_string(p) + " too small";
          if ((*shm)->is_peer(p) != (host_of[p] == host_of[r])) errors[r] = "rank " + std::to_string(p) + " peer?";
          const auto* peer = reinterpret_cast<const int64_t*>((*shm)->segment(p));
          if (!(*shm)->is_peer(p)) {
            if (peer != nullptr) errors[r] = "rank " + std::to_string(p) + " of another host is mapped";
            continue;
          }
          for (int64_t i = 0; i < need[p] / 8; i += 997) {
            if (peer[i] != p * 1000003 + i + bytes) errors[r] = "rank " + std::to_string(p) + " mismatch";
          }
        }
        if (!t->Barrier(deadline).ok()) return;
      }
      // The same sizes again: nothing grows, on any rank (a rank that
      // thought otherwise would wait here for the others).
      std::vector<int64_t> same(world, int64_t{3} << 20);
      same[2] *= 2;
      absl::Status again = (*shm)->Reserve(*t, same, deadline);
      if (!again.ok()) errors[r] = std::string(again.message());
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  EXPECT_TRUE(std::filesystem::is_empty(first)) << "segments were left in " << first;
  EXPECT_TRUE(std::filesystem::is_empty(second)) << "segments were left in " << second;
  std::filesystem::remove_all(first);
  std::filesystem::remove_all(second);
}

TEST(SharedSegmentsTest, PeersMustBeAscendingRanksWithThisOne) {
  InProcessHub hub(1);
  std::unique_ptr<Transport> t = hub.Connect(0);
  for (const std::vector<int>& peers : {std::vector<int>{}, std::vector<int>{1}, std::vector<int>{0, 0}}) {
    auto shm = SharedSegments::Create(*t, {}, peers, Deadline::InSeconds(10));
    EXPECT_EQ(shm.status().code(), absl::StatusCode::kInvalidArgument) << shm.status();
  }
  EXPECT_TRUE(SharedSegments::Create(*t, {}, {0}, Deadline::InSeconds(10)).ok());
}

// A rank that cannot grow its segment (here: over its limit): every rank
// gets the same error naming it, and no file is left in the directory.
TEST(SharedSegmentsTest, AFailedReserveIsTheSameErrorOnEveryRankAndLeavesNothing) {
  char directory[] = "/dev/shm/moex-segments-test-XXXXXX";
  ASSERT_NE(mkdtemp(directory), nullptr);
  const int world = 3;
  InProcessHub hub(world);
  std::vector<std::thread> threads;
  std::vector<absl::Status> reserved(world);
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Transport> t = hub.Connect(r);
      SharedSegmentsOptions options{.directory = directory, .max_bytes = r == 1 ? int64_t{1} << 20 : 0};
      auto shm = SharedSegments::Create(*t, options, Deadline::InSeconds(10));
      ASSERT_TRUE(shm.ok()) << shm.status();
      std::vector<int64_t> need(world, int64_t{2} << 20);
      reserved[r] = (*shm)->Reserve(*t, need, Deadline::InSeconds(10));
    });
  }
  for (auto& th : threads) th.join();
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(reserved[r].code(), absl::StatusCode::kResourceExhausted) << reserved[r];
    EXPECT_EQ(reserved[r].message(), reserved[0].message()) << "rank " << r;
  }
  EXPECT_EQ(std::string(reserved[0].message()),
            std::string(directory) + " on rank 1: a 2.00 MiB segment is over the 1.00 MiB limit "
                                     "(SharedSegmentsOptions.max_bytes)");
  EXPECT_TRUE(std::filesystem::is_empty(directory)) << "segments were left in " << directory;
  std::filesystem::remove_all(directory);
}

}  // namespace
}  // namespace moex::transport
