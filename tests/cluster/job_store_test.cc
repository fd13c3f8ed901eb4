#include "moex/cluster/job_store.h"

#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::cluster {
namespace {

TEST(JobStoreTest, RoundTripsAndReplaces) {
  std::string dir = std::filesystem::temp_directory_path() / ("moex_store_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  {
    auto store = *JobStore::Open(dir);
    moex::v1::Job job;
    job.set_id("j-1");
    job.set_state(moex::v1::JOB_STATE_RUNNING);
    job.mutable_spec()->set_world_size(4);
    job.set_submit_time_unix_ms(5);
    ASSERT_TRUE(store->Put(job, 1234).ok());
    job.set_state(moex::v1::JOB_STATE_SUCCEEDED);
    ASSERT_TRUE(store->Put(job, 1234).ok());
  }
  auto reopened = *JobStore::Open(dir);  // a restart
  std::vector<StoredJob> jobs = *reopened->LoadAll();
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].job.state(), moex::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs[0].job.spec().world_size(), 4);
  EXPECT_EQ(jobs[0].process_group, 1234);
  std::filesystem::remove_all(dir);
}

// Pages in (submit time, id) order: ties on the time broken by id, each
// page starting after the last of the one before.
TEST(JobStoreTest, PagesInSubmitOrder) {
  std::string dir = std::filesystem::temp_directory_path() / ("moex_store_pages_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  auto store = *JobStore::Open(dir);
  const std::vector<std::pair<int64_t, std::string>> rows = {{30, "j-c"}, {10, "j-b"}, {20, "j-a"}, {20, "j-d"}, {10, "j-a"}};
  for (const auto& [ms, id] : rows) {
    moex::v1::Job job;
    job.set_id(id + std::to_string(ms));
    job.set_submit_time_unix_ms(ms);
    ASSERT_TRUE(store->Put(job, 0).ok());
  }
  std::vector<std::string> order;
  int64_t after_ms = std::numeric_limits<int64_t>::min();
  std::string after_id;
  for (int pages = 0; pages < 10; ++pages) {
    std::vector<StoredJob> page = *store->LoadPage(after_ms, after_id, 2);
    ASSERT_LE(page.size(), 2u);
    for (const StoredJob& s : page) order.push_back(s.job.id());
    if (page.size() < 2) break;
    after_ms = page.back().job.submit_time_unix_ms();
    after_id = page.back().job.id();
  }
  EXPECT_EQ(order, (std::vector<std::string>{"j-a10", "j-b10", "j-a20", "j-d20", "j-c30"}));
  EXPECT_EQ(store->LoadAll()->size(), 5u);
  std::filesystem::remove_all(dir);
}

TEST(JobStoreTest, UnusableStateDirIsNamed) {
  auto store = JobStore::Open("/proc/moex-cannot-be-here");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), ::testing::HasSubstr("/proc/moex-cannot-be-here"));
}

}  // namespace
}  // namespace moex::cluster
