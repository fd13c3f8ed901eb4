// The conformance suite on in-process ranks (threads), world sizes 1 to 6.
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "moex/transport/inprocess_transport.h"
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
