#include "moex/cluster/job_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>
#include <tuple>
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

// What retention drops: ended jobs past the newest N by end, and those that
// ended before a cutoff; never one that has not ended.
TEST(JobStoreTest, ExpiredIsTheOldestEndedJobs) {
  std::string dir = std::filesystem::temp_directory_path() / ("moex_store_expired_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  auto store = *JobStore::Open(dir);
  auto put = [&](const std::string& id, moex::v1::JobState state, int64_t end_ms) {
    moex::v1::Job job;
    job.set_id(id);
    job.set_state(state);
    job.set_submit_time_unix_ms(1);
    job.set_end_time_unix_ms(end_ms);
    ASSERT_TRUE(store->Put(job, 0).ok());
  };
  put("j-running", moex::v1::JOB_STATE_RUNNING, 0);
  put("j-pending", moex::v1::JOB_STATE_PENDING, 0);
  put("j-e10", moex::v1::JOB_STATE_SUCCEEDED, 10);
  put("j-e30", moex::v1::JOB_STATE_FAILED, 30);
  put("j-e20", moex::v1::JOB_STATE_CANCELLED, 20);
  using Ids = std::vector<std::string>;
  EXPECT_EQ(*store->Expired(0, 0), Ids{});
  EXPECT_EQ(*store->Expired(1, 0), (Ids{"j-e10", "j-e20"}));
  EXPECT_EQ(*store->Expired(5, 0), Ids{});
  EXPECT_EQ(*store->Expired(0, 25), (Ids{"j-e10", "j-e20"}));
  EXPECT_EQ(*store->Expired(2, 15), (Ids{"j-e10"}));
  ASSERT_TRUE(store->Delete("j-e10").ok());
  ASSERT_TRUE(store->Delete("j-e10").ok());  // gone already: fine
  EXPECT_EQ(*store->Expired(1, 0), (Ids{"j-e20"}));
  EXPECT_EQ(store->Get("j-e10").status().code(), absl::StatusCode::kNotFound);
  std::filesystem::remove_all(dir);
}

// A database from before the end columns gets them, filled from its records.
TEST(JobStoreTest, AnOlderDatabaseGetsItsEndColumns) {
  std::string dir = std::filesystem::temp_directory_path() / ("moex_store_old_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/jobs.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE jobs (id TEXT PRIMARY KEY, submit_ms INTEGER NOT NULL, process_group INTEGER "
                           "NOT NULL DEFAULT 0, record BLOB NOT NULL);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    for (auto [id, state, end] : {std::tuple{"j-old", moex::v1::JOB_STATE_SUCCEEDED, 5},
                                  std::tuple{"j-new", moex::v1::JOB_STATE_FAILED, 9},
                                  std::tuple{"j-run", moex::v1::JOB_STATE_RUNNING, 0}}) {
      moex::v1::Job job;
      job.set_id(id);
      job.set_state(state);
      job.set_end_time_unix_ms(end);
      const std::string record = job.SerializeAsString();
      sqlite3_stmt* statement = nullptr;
      ASSERT_EQ(sqlite3_prepare_v2(db, "INSERT INTO jobs (id, submit_ms, record) VALUES (?, 1, ?)", -1, &statement,
                                   nullptr),
                SQLITE_OK);
      sqlite3_bind_text(statement, 1, id, -1, SQLITE_TRANSIENT);
      sqlite3_bind_blob(statement, 2, record.data(), static_cast<int>(record.size()), SQLITE_TRANSIENT);
      ASSERT_EQ(sqlite3_step(statement), SQLITE_DONE);
      sqlite3_finalize(statement);
    }
    sqlite3_close(db);
  }
  auto store = JobStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*store)->Expired(1, 0), std::vector<std::string>{"j-old"});
  EXPECT_EQ((*store)->LoadAll()->size(), 3u);
  store->reset();
  EXPECT_EQ(*(*JobStore::Open(dir))->Expired(1, 0), std::vector<std::string>{"j-old"});  // opened again: as it was
  std::filesystem::remove_all(dir);
}

// One unreadable record (a torn write, a disk error, a hand edit) used to
// stop the controller from starting. It is moved aside, bytes intact, and
// named; the other jobs load.
TEST(JobStoreTest, ACorruptRecordIsQuarantinedNotFatal) {
  std::string dir = std::filesystem::temp_directory_path() / ("moex_store_corrupt_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  {
    auto store = JobStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    for (const char* id : {"j-good", "j-bad", "j-other"}) {
      moex::v1::Job job;
      job.set_id(id);
      job.set_submit_time_unix_ms(7);
      ASSERT_TRUE((*store)->Put(job, 0).ok());
    }
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/jobs.db").c_str(), &db), SQLITE_OK);
    // Not a protobuf (a field tag of 0), and a record whose id is another's.
    moex::v1::Job other;
    other.set_id("j-good");
    const std::string stolen = other.SerializeAsString();
    sqlite3_stmt* statement = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "UPDATE jobs SET record = ? WHERE id = ?", -1, &statement, nullptr), SQLITE_OK);
    sqlite3_bind_blob(statement, 1, "\x00\x00\xff\xff", 4, SQLITE_TRANSIENT);
    sqlite3_bind_text(statement, 2, "j-bad", -1, SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(statement), SQLITE_DONE);
    sqlite3_reset(statement);
    sqlite3_bind_blob(statement, 1, stolen.data(), static_cast<int>(stolen.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(statement, 2, "j-other", -1, SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(statement), SQLITE_DONE);
    sqlite3_finalize(statement);
    sqlite3_close(db);
  }
  auto store = JobStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_EQ((*store)->quarantined().size(), 2u);
  EXPECT_EQ((*store)->quarantined()[0], "job j-bad (4 bytes): the record does not parse as a moex.v1.Job");
  EXPECT_THAT((*store)->quarantined()[1], ::testing::HasSubstr("job j-other"));
  EXPECT_THAT((*store)->quarantined()[1], ::testing::HasSubstr("holds another job's id"));
  auto loaded = (*store)->LoadAll();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), 1u);
  EXPECT_EQ((*loaded)[0].job.id(), "j-good");
  store->reset();
  // Kept, not thrown away; and opened again nothing more is moved.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/jobs.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* statement = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT id, length(record) FROM quarantine ORDER BY id", -1, &statement, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(statement), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(statement, 0)), "j-bad");
  EXPECT_EQ(sqlite3_column_int(statement, 1), 4);
  sqlite3_finalize(statement);
  sqlite3_close(db);
  EXPECT_TRUE((*JobStore::Open(dir))->quarantined().empty());
  std::filesystem::remove_all(dir);
}

TEST(JobStoreTest, UnusableStateDirIsNamed) {
  auto store = JobStore::Open("/proc/moex-cannot-be-here");
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(std::string(store.status().message()), ::testing::HasSubstr("/proc/moex-cannot-be-here"));
}

}  // namespace
}  // namespace moex::cluster
