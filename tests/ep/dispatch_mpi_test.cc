// Dispatch and combine between real processes, under mpirun, on every path
// and every transport built:
//   mpirun -np N dispatch_mpi_test
// The same checks as dispatch_test.cc (dispatch_checks.h), with segments
// mapped across processes and the host probe across processes; the
// per-peer path and kAuto's choice on every split of the processes into
// "hosts" (a segment directory per host), and every path giving the same
// bits. Every rank runs every test; a failure on any rank fails the run.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "dispatch_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/transport/gather_strings.h"
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

// The directories of a split for these processes: rank 0 makes a fresh
// base in /dev/shm, every rank makes its host's directory in it; at the
// end (every rank, together) each checks that its directory is empty and
// rank 0 removes the base.
class ProcessHostDirectories {
 public:
  static std::unique_ptr<ProcessHostDirectories> Make(transport::Transport& t, const testing::HostSplit& split) {
    std::string base;
    if (t.rank() == 0) {
      char made[] = "/dev/shm/moex-dispatch-mpi-test-XXXXXX";
      if (mkdtemp(made) != nullptr) base = made;
    }
    absl::StatusOr<std::vector<std::string>> bases = transport::AllGatherStrings(t, base, Deadline::InSeconds(60));
    EXPECT_TRUE(bases.ok()) << bases.status();
    if (!bases.ok() || (*bases)[0].empty()) return nullptr;
    auto dirs = std::unique_ptr<ProcessHostDirectories>(new ProcessHostDirectories(t, split, (*bases)[0]));
    std::error_code error;
    std::filesystem::create_directories(dirs->names.of(t.rank()), error);
    EXPECT_FALSE(error) << dirs->names.of(t.rank()) << ": " << error.message();
    return dirs;
  }
  ~ProcessHostDirectories() {
    EXPECT_TRUE(t_.Barrier(Deadline::InSeconds(60)).ok());
    EXPECT_TRUE(std::filesystem::is_empty(names.of(t_.rank()))) << "files were left in " << names.of(t_.rank());
    EXPECT_TRUE(t_.Barrier(Deadline::InSeconds(60)).ok());
    if (t_.rank() == 0) std::filesystem::remove_all(names.base());
  }
  testing::HostDirectories names;

 private:
  ProcessHostDirectories(transport::Transport& t, const testing::HostSplit& split, std::string base)
      : names(split, std::move(base)), t_(t) {}
  transport::Transport& t_;
};

// Per peer and hierarchical (asked for) and auto on every split of this world into hosts:
// the path and why, then every case of this world, twice.
class DispatchMpiHostsTest : public ::testing::TestWithParam<std::tuple<std::string, DispatchPath>> {};

TEST_P(DispatchMpiHostsTest, EveryCaseOnEverySplitIntoHosts) {
  const auto& [name, path] = GetParam();
  std::unique_ptr<transport::Transport> t = Make(name);
  ASSERT_NE(t, nullptr);
  std::vector<testing::DispatchCase> cases = testing::DispatchCases(t->world_size());
  for (const testing::HostSplit& split : testing::HostSplits(t->world_size())) {
    SCOPED_TRACE(StrCat("hosts ", split.name));
    std::unique_ptr<ProcessHostDirectories> dirs = ProcessHostDirectories::Make(*t, split);
    ASSERT_NE(dirs, nullptr);
    absl::StatusOr<Dispatcher> dispatcher =
        Dispatcher::Create(*t, dirs->names.options(t->rank(), path), Deadline::InSeconds(60));
    ASSERT_TRUE(dispatcher.ok()) << dispatcher.status();
    const DispatchPath expected = path == DispatchPath::kAuto ? split.AutoPath() : path;
    EXPECT_EQ(dispatcher->path(), DispatchPathName(expected)) << dispatcher->path_reason();
    const std::string where = split.Describe(testing::ThisHostName());
    if (expected == DispatchPath::kPerPeer) {
      EXPECT_EQ(dispatcher->path_reason(), StrCat("per peer: shared memory within a host, all-to-all-v between hosts: ",
                                                  where, ", ", dirs->names.Segments()));
    } else if (expected == DispatchPath::kHierarchical) {
      EXPECT_EQ(dispatcher->path_reason(), testing::HierarchicalReason(where, dirs->names.Segments()));
    } else if (expected == DispatchPath::kSharedMemory) {
      EXPECT_EQ(dispatcher->path_reason(), StrCat("shared memory: ", where, ", ", dirs->names.Segments()));
    } else if (t->world_size() > 1) {
      EXPECT_EQ(dispatcher->path_reason(), StrCat("all-to-all-v: every rank is alone on its host (", where, ")"));
    }
    int round = 0;
    for (const testing::DispatchCase& c : cases) {
      SCOPED_TRACE(c.name);
      ASSERT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, c, round++, false, &split));
      ASSERT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, c, round++, /*tensor_partial=*/true, &split));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TransportsAndPaths, DispatchMpiHostsTest,
                         ::testing::Combine(::testing::ValuesIn(Transports()),
                                            ::testing::Values(DispatchPath::kPerPeer, DispatchPath::kHierarchical,
                                                              DispatchPath::kAuto)),
                         [](const ::testing::TestParamInfo<std::tuple<std::string, DispatchPath>>& param_info) {
                           const DispatchPath path = std::get<1>(param_info.param);
                           return std::get<0>(param_info.param) + (path == DispatchPath::kAuto      ? "_auto"
                                                                   : path == DispatchPath::kPerPeer ? "_perpeer"
                                                                                                    : "_hierarchical");
                         });

// Shared memory, all-to-all-v and per peer on every split: this rank's
// outputs of every case, bit for bit the same.
class DispatchMpiBitsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DispatchMpiBitsTest, EveryPathGivesTheSameBits) {
  std::unique_ptr<transport::Transport> t = Make(GetParam());
  ASSERT_NE(t, nullptr);
  std::vector<testing::DispatchCase> cases = testing::DispatchCases(t->world_size());
  if (cases.empty()) GTEST_SKIP() << "no case for " << t->world_size() << " ranks";
  // This rank's output of every case on `options`.
  auto outputs = [&](const DispatchOptions& options) {
    std::vector<Tensor> out;
    absl::StatusOr<Dispatcher> dispatcher = Dispatcher::Create(*t, options, Deadline::InSeconds(60));
    EXPECT_TRUE(dispatcher.ok()) << dispatcher.status();
    if (!dispatcher.ok()) return out;
    for (const testing::DispatchCase& c : cases) {
      std::optional<Tensor> y = testing::CombinedOutput(*t, *dispatcher, c, static_cast<int>(out.size()));
      if (!y) break;
      out.push_back(std::move(*y));
    }
    return out;
  };
  auto expect_same = [&](const std::vector<Tensor>& got, const std::vector<Tensor>& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i].values.size(), want[i].values.size());
      EXPECT_TRUE(want[i].values.empty() ||
                  std::memcmp(got[i].data(), want[i].data(), want[i].values.size() * sizeof(float)) == 0)
          << what << " and shared memory disagree on rank " << t->rank() << ", " << cases[i].name;
    }
  };
  const std::vector<Tensor> shared = outputs({.path = DispatchPath::kSharedMemory});
  ASSERT_EQ(shared.size(), cases.size());
  expect_same(outputs({.path = DispatchPath::kAllToAllV}), shared, "all-to-all-v");
  for (const testing::HostSplit& split : testing::HostSplits(t->world_size())) {
    std::unique_ptr<ProcessHostDirectories> dirs = ProcessHostDirectories::Make(*t, split);
    ASSERT_NE(dirs, nullptr);
    expect_same(outputs(dirs->names.options(t->rank(), DispatchPath::kPerPeer)), shared,
                StrCat("per peer on hosts ", split.name));
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, DispatchMpiBitsTest, ::testing::ValuesIn(Transports()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) { return param_info.param; });

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
  // The last rank, which could not probe, is a host of its own.
  testing::HostSplit split{.name = "last alone", .host_of = std::vector<int>(t->world_size(), 0)};
  split.host_of[last] = 1;
  if (!cases.empty()) {
    EXPECT_TRUE(CheckDispatchAndCombine(*t, *dispatcher, cases.front(), 0, false, &split));
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
