// The host probe on in-process ranks (threads): ranks are on one host when
// they see each other's files in their segment directory, so giving ranks
// different directories stands in for different hosts.
#include "moex/transport/host_map.h"

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::transport {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Every rank's map, probed with the directory `directory_of(rank)`.
std::vector<HostMap> ProbeAll(int world, const std::function<std::string(int)>& directory_of) {
  InProcessHub hub(world);
  std::vector<std::optional<HostMap>> maps(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<Transport> t = hub.Connect(r);
      absl::StatusOr<HostMap> map = HostMap::Probe(*t, directory_of(r), Deadline::InSeconds(30));
      ASSERT_TRUE(map.ok()) << map.status();
      maps[r] = std::move(*map);
    });
  }
  for (std::thread& thread : threads) thread.join();
  std::vector<HostMap> out;
  for (std::optional<HostMap>& map : maps) {
    if (!map) ADD_FAILURE() << "a rank has no map";
    else out.push_back(std::move(*map));
  }
  return out;
}

// A fresh directory, removed at the end.
class TempDirectory {
 public:
  TempDirectory() {
    char path[] = "/tmp/moex-host-map-XXXXXX";
    if (mkdtemp(path) != nullptr) path_ = path;
  }
  ~TempDirectory() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  bool empty() const { return std::filesystem::is_empty(path_); }

 private:
  std::string path_;
};

std::string ThisHost() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

TEST(HostMapTest, RanksSharingOneDirectoryAreOneHost) {
  TempDirectory shm;
  std::vector<HostMap> maps = ProbeAll(4, [&](int) { return shm.path(); });
  ASSERT_EQ(maps.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const HostMap& map = maps[r];
    EXPECT_EQ(map.rank(), r);
    EXPECT_EQ(map.world_size(), 4);
    EXPECT_TRUE(map.all_on_one_host());
    EXPECT_THAT(map.local_ranks(), ElementsAre(0, 1, 2, 3));
    EXPECT_EQ(map.host_name(3), ThisHost());
    EXPECT_EQ(map.probe_error(2), "");
    EXPECT_EQ(map.Describe(), StrCat("4 ranks on one host (", ThisHost(), ")"));
  }
  EXPECT_TRUE(shm.empty()) << "probe files were left in " << shm.path();
}

TEST(HostMapTest, RanksThatCannotSeeEachOthersFilesAreDifferentHosts) {
  TempDirectory a, b;
  // Ranks 0 and 2 in one directory, 1 and 3 in another: two "hosts".
  std::vector<HostMap> maps = ProbeAll(4, [&](int r) { return r % 2 == 0 ? a.path() : b.path(); });
  ASSERT_EQ(maps.size(), 4u);
  for (int r = 0; r < 4; ++r) {
    const HostMap& map = maps[r];
    EXPECT_EQ(map.num_hosts(), 2);
    EXPECT_FALSE(map.all_on_one_host());
    EXPECT_EQ(map.host_of(0), 0);
    EXPECT_EQ(map.host_of(1), 1);
    EXPECT_EQ(map.host_of(2), 0);
    EXPECT_EQ(map.host_of(3), 1);
    EXPECT_TRUE(map.same_host(1, 3));
    EXPECT_FALSE(map.same_host(0, 1));
    EXPECT_THAT(map.ranks_on_host(1), ElementsAre(1, 3));
    EXPECT_THAT(map.local_ranks(), r % 2 == 0 ? ElementsAre(0, 2) : ElementsAre(1, 3));
    EXPECT_EQ(map.Describe(),
              StrCat("4 ranks on 2 hosts: ", ThisHost(), " (ranks 0, 2), ", ThisHost(), " (ranks 1, 3)"));
  }
  EXPECT_TRUE(a.empty());
  EXPECT_TRUE(b.empty());
}

TEST(HostMapTest, ARankThatCannotMakeItsFileIsAloneAndEveryRankKnowsWhy) {
  TempDirectory shm;
  std::vector<HostMap> maps =
      ProbeAll(3, [&](int r) { return r == 1 ? std::string("/nonexistent-moex-host-map") : shm.path(); });
  ASSERT_EQ(maps.size(), 3u);
  for (const HostMap& map : maps) {
    EXPECT_EQ(map.num_hosts(), 2);
    EXPECT_EQ(map.host_of(0), 0);
    EXPECT_EQ(map.host_of(1), 1);
    EXPECT_EQ(map.host_of(2), 0);
    EXPECT_THAT(map.probe_error(1), StartsWith("cannot make /nonexistent-moex-host-map/moex-probe-"));
    EXPECT_THAT(map.probe_error(1), HasSubstr("No such file or directory"));
    EXPECT_EQ(map.probe_error(0), "");
  }
  EXPECT_TRUE(shm.empty());
}

TEST(HostMapTest, OneRankIsOneHost) {
  std::vector<HostMap> maps = ProbeAll(1, [](int) { return std::string("/dev/shm"); });
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_TRUE(maps[0].all_on_one_host());
  EXPECT_EQ(maps[0].Describe(), StrCat("1 rank on one host (", ThisHost(), ")"));
  HostMap made = HostMap::OneHost(2, 3, "node7");
  EXPECT_THAT(made.local_ranks(), ElementsAre(0, 1, 2));
  EXPECT_EQ(made.Describe(), "3 ranks on one host (node7)");
}

}  // namespace
}  // namespace moex::transport
