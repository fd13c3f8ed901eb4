// The conformance suite under real mpirun, for every transport built:
//   mpirun -np N transport_mpi_test
// Every rank runs the same tests; a failure on any rank fails the run.
#include <cstdlib>
#include <memory>

#include "gtest/gtest.h"
#include "moex/transport/host_map.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport_registry.h"
#include "transport_conformance.h"

namespace moex::transport {
namespace {

std::unique_ptr<Transport> Make(const std::string& kind) {
  absl::StatusOr<std::unique_ptr<Transport>> transport = CreateTransport(kind);
  EXPECT_TRUE(transport.ok()) << transport.status();
  return transport.ok() ? std::move(*transport) : nullptr;
}

class MpiRunTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MpiRunTest, PassesTheSuite) {
  std::unique_ptr<Transport> transport = Make(GetParam());
  ASSERT_NE(transport, nullptr);
  EXPECT_EQ(transport->name(), GetParam());
  testing::RunConformance(*transport);
}

// Processes of one mpirun on one machine share /dev/shm: the probe finds
// them all on one host, with this host's name.
TEST_P(MpiRunTest, ProcessesOnThisMachineAreOneHost) {
  std::unique_ptr<Transport> transport = Make(GetParam());
  ASSERT_NE(transport, nullptr);
  absl::StatusOr<HostMap> map = HostMap::Probe(*transport, "/dev/shm", Deadline::InSeconds(30));
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_TRUE(map->all_on_one_host()) << map->Describe();
  EXPECT_EQ(static_cast<int>(map->local_ranks().size()), transport->world_size());
  for (int r = 0; r < transport->world_size(); ++r) EXPECT_EQ(map->probe_error(r), "") << "rank " << r;
}

// Last: the absent rank leaves messages behind that only this test expects.
TEST_P(MpiRunTest, MissingRankIsNamed) {
  std::unique_ptr<Transport> transport = Make(GetParam());
  ASSERT_NE(transport, nullptr);
  if (transport->world_size() < 2) GTEST_SKIP() << "needs two ranks";
  testing::CheckMissingRankIsNamed(*transport, transport->world_size() - 1);
  // The absent rank's late arrival must not disturb a fresh transport.
  std::unique_ptr<Transport> fresh = Make(GetParam());
  ASSERT_TRUE(fresh->Barrier(Deadline::InSeconds(30)).ok());
}

// Every transport the registry builds except "nccl", which is "mpi" on the
// host side.
std::vector<std::string> Kinds() {
  std::vector<std::string> kinds = TransportNames();
  std::erase(kinds, "nccl");
  return kinds;
}

INSTANTIATE_TEST_SUITE_P(Transports, MpiRunTest, ::testing::ValuesIn(Kinds()),
                         [](const ::testing::TestParamInfo<std::string>& kind) { return kind.param; });

}  // namespace
}  // namespace moex::transport

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto session = moex::transport::MpiSession::Start(&argc, &argv);
  if (!session.ok()) {
    fprintf(stderr, "%s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  // Only rank 0 prints the test log (every rank's failures still fail the
  // run); MOEX_TEST_ALL_RANKS_PRINT=1 lets every rank print.
  if ((*session)->rank() != 0 && getenv("MOEX_TEST_ALL_RANKS_PRINT") == nullptr) {
    delete ::testing::UnitTest::GetInstance()->listeners().Release(
        ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  }
  int result = RUN_ALL_TESTS();
  return result;
}
