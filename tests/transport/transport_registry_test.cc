// The registry's names and its errors (creating a transport needs MPI up:
// transport_mpi_test creates each one under mpirun).
#include "moex/transport/transport_registry.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::transport {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TransportRegistryTest, NamesWhatThisBuildHas) {
#ifdef MOEX_HAVE_UCX
  EXPECT_THAT(TransportNames(), ElementsAre("mpi", "ucx", "nccl"));
#else
  EXPECT_THAT(TransportNames(), ElementsAre("mpi", "nccl"));
#endif
}

TEST(TransportRegistryTest, AnUnknownNameListsTheKnownOnes) {
  for (const char* name : {"inprocess", "inproc", "tcp", ""}) {
    absl::StatusOr<std::unique_ptr<Transport>> made = CreateTransport(name);
    EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument) << name;
#ifdef MOEX_HAVE_UCX
    EXPECT_THAT(std::string(made.status().message()), HasSubstr("' is not one of mpi, ucx, nccl")) << name;
#else
    EXPECT_THAT(std::string(made.status().message()), HasSubstr("' is not one of mpi, nccl")) << name;
#endif
  }
}

#ifndef MOEX_HAVE_UCX
TEST(TransportRegistryTest, UcxWithoutUcxSaysWhy) {
  absl::StatusOr<std::unique_ptr<Transport>> made = CreateTransport("ucx");
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(made.status().message()), HasSubstr("built without UCX"));
}
#endif

}  // namespace
}  // namespace moex::transport
