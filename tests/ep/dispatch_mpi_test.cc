// Dispatch and combine between real processes, under mpirun, on every path
// and every transport built:
//   mpirun -np N dispatch_mpi_test
// The same checks as dispatch_test.cc (dispatch_checks.h), with segments
// mapped across processes and the host probe across processes. Every rank
// runs every test; a failure on any rank fails the run.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "dispatch_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport_registry.h"

namespace moex::ep {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

std::unique_ptr<transport::Transport> Make(const std::string& name) {
  absl::StatusOr<std::unique_ptr<transport::Transport>> made = transport::CreateTransport(name);
  EXPECT_TRUE(made.ok()) << made.status();
  return made.ok() ? std::move(*made) : nullptr;
}

std::vector<std::string> Transports() {
  std::vector<std::string> names = transport::TransportNames();
  std::erase(names, "nccl");  // the same MPI transport on the host side
  return names;
}

class DispatchMpiTest : public ::testing::TestWithParam<std::tuple<std::string, DispatchPath>> {};

TEST_P(DispatchMpiTest, EveryCaseOfThisWorldSize) {
  const auto& [name, path] = GetParam();
  std::unique_ptr<transport::Transport> t = Make(name);
  ASSERT_NE(t, nullptr);
  absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(*t, {.path = path}, Deadline::InSeconds(60));
  ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
  // Processes of one mpirun on one machine share /dev/shm: auto takes it.
  const bool shared = path == DispatchPath::kSharedMemory || (path == DispatchPath::kAuto && t->world_size() > 1);
  EXPECT_EQ(dispatcher->path(), shared ? "shared memory" : "all-to-all-v") << dispatcher->path_reason();
  if (shared) {
    EXPECT_THAT(dispatcher->path_reason(), StartsWith(StrCat("shared memory: ", t->world_size(),
                                                             t->world_size() == 1 ? " rank" : " ranks", " on one host")));
  }
  std::vector<testing::DispatchCase> cases = testing::DispatchCases(t->world_size());
  if (cases.empty()) GTEST_SKIP() << "no case for " << t->world_size() << " ranks";
  int round = 0;
  for (const testing::DispatchCase& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, c, round++));
    ASSERT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, c, round++, /*tensor_partial=*/true));
  }
}

INSTANTIATE_TEST_SUITE_P(
    TransportsAndPaths, DispatchMpiTest,
    ::testing::Combine(::testing::ValuesIn(Transports()),
                       ::testing::Values(DispatchPath::kAuto, DispatchPath::kSharedMemory, DispatchPath::kAllToAllV)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, DispatchPath>>& param_info) {
      const DispatchPath path = std::get<1>(param_info.param);
      return std::get<0>(param_info.param) + (path == DispatchPath::kAuto           ? "_auto"
                                        : path == DispatchPath::kSharedMemory ? "_shared"
                                                                              : "_alltoallv");
    });

// The last rank's segment directory does not exist: every process falls
// back together and says why, and the fall-back path still delivers.
TEST(DispatchMpiChoiceTest, AutoFallsBackTogether) {
  std::unique_ptr<transport::Transport> t = Make("mpi");
  ASSERT_NE(t, nullptr);
  if (t->world_size() < 2) GTEST_SKIP() << "needs two ranks";
  const int last = t->world_size() - 1;
  DispatchOptions options;
  if (t->rank() == last) options.shared_memory.directory = "/nonexistent-moex-dispatch-mpi-test";
  absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(*t, options, Deadline::InSeconds(60));
  ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
  EXPECT_EQ(dispatcher->path(), "all-to-all-v");
  EXPECT_THAT(dispatcher->path_reason(), StartsWith(StrCat("all-to-all-v: rank ", last, " cannot make ")));
  EXPECT_THAT(dispatcher->path_reason(), HasSubstr("fell back"));
  // The same words on every rank: compare lengths and a checksum.
  const std::string& reason = dispatcher->path_reason();
  std::vector<double> mine = {static_cast<double>(reason.size()),
                              static_cast<double>(std::hash<std::string>()(reason) % (1u << 30))};
  std::vector<double> all(2 * t->world_size());
  ASSERT_TRUE(t->AllGather(mine, all, Deadline::InSeconds(60)).ok());
  for (int r = 0; r < t->world_size(); ++r) {
    EXPECT_EQ(all[2 * r], mine[0]) << "rank " << r;
    EXPECT_EQ(all[2 * r + 1], mine[1]) << "rank " << r;
  }
  std::vector<testing::DispatchCase> cases = testing::DispatchCases(t->world_size());
  if (!cases.empty()) {
    EXPECT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, cases.front(), 0));
  }
}

}  // namespace
}  // namespace moex::ep

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto session = moex::transport::MpiSession::Start(&argc, &argv);
  if (!session.ok()) {
    std::fprintf(stderr, "%s\n", std::string(session.status().message()).c_str());
    return 1;
  }
  // Only rank 0 prints the test log (every rank's failures still fail the
  // run); MOEX_TEST_ALL_RANKS_PRINT=1 lets every rank print.
  if ((*session)->rank() != 0 && std::getenv("MOEX_TEST_ALL_RANKS_PRINT") == nullptr) {
    delete ::testing::UnitTest::GetInstance()->listeners().Release(
        ::testing::UnitTest::GetInstance()->listeners().default_result_printer());
  }
  return RUN_ALL_TESTS();
}
