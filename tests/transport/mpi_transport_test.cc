// The conformance suite under real mpirun, for every transport built:
//   mpirun -np N transport_mpi_test
// Every rank runs the same tests; a failure on any rank fails the run.
#include <cstdlib>
#include <memory>

#include "gtest/gtest.h"
#include "moex/transport/mpi_transport.h"
#include "transport_conformance.h"
#ifdef MOEX_HAVE_UCX
#include "moex/transport/ucx_transport.h"
#endif

namespace moex::transport {
namespace {

std::unique_ptr<Transport> Make(const std::string& kind) {
  absl::StatusOr<std::unique_ptr<Transport>> transport = CreateMpiTransport();
#ifdef MOEX_HAVE_UCX
  if (kind == "ucx" && transport.ok()) transport = CreateUcxTransport(std::move(*transport));
#endif
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

TEST_P(MpiRunTest, MissingRankIsNamed) {
  std::unique_ptr<Transport> transport = Make(GetParam());
  ASSERT_NE(transport, nullptr);
  if (transport->world_size() < 2) GTEST_SKIP() << "needs two ranks";
  testing::CheckMissingRankIsNamed(*transport, transport->world_size() - 1);
  // The absent rank's late arrival must not disturb a fresh transport.
  std::unique_ptr<Transport> fresh = Make(GetParam());
  ASSERT_TRUE(fresh->Barrier(Deadline::InSeconds(30)).ok());
}

std::vector<std::string> Kinds() {
#ifdef MOEX_HAVE_UCX
  return {"mpi", "ucx"};
#else
  return {"mpi"};
#endif
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
