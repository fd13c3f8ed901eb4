#include "moex/control/job_store.h"

#include <unistd.h>

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::control {
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

TEST(JobStoreTest, UnusableStateDirIsNamed) {
  auto store = JobStore::Open("/proc/moex-cannot-be-here");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), ::testing::HasSubstr("/proc/moex-cannot-be-here"));
}

}  // namespace
}  // namespace moex::control
