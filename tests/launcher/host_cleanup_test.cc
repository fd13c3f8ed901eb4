// The host cleanup removes what a job's ranks recorded, and nothing else:
// not another job's segments, not a file outside the shared-memory
// directory, not through a symbolic link, not another user's file.
#include "moex/launcher/host_cleanup.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moex::launcher {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class HostCleanupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char made[] = "/tmp/moex-host-cleanup-test-XXXXXX";
    ASSERT_NE(mkdtemp(made), nullptr);
    root_ = made;
    shm_ = root_ + "/shm";
    outside_ = root_ + "/outside";
    fs::create_directories(shm_);
    fs::create_directories(outside_);
    victim_ = outside_ + "/victim";
    Touch(victim_);
  }
  void TearDown() override { fs::remove_all(root_); }

  static void Touch(const std::string& path) { std::ofstream(path) << "x"; }
  HostCleanupRequest Request(int attempt = 0) const {
    HostCleanupRequest request;
    request.job_id = "j-0123456789ab";
    request.attempt = attempt;
    request.shm_dir = shm_;
    request.weight_cache_root = shm_;
    request.wait_seconds = 0;
    return request;
  }
  void Record(int attempt, int rank, const std::vector<std::string>& paths) const {
    absl::StatusOr<RankRecord> record = RankRecord::Open(shm_, "j-0123456789ab", attempt, rank);
    ASSERT_TRUE(record.ok()) << record.status();
    for (const std::string& path : paths) ASSERT_TRUE(record->Add(path).ok());
  }

  std::string root_, shm_, outside_, victim_;
};

TEST(JobIdTest, OnlyNamesThatStayInTheirDirectory) {
  EXPECT_TRUE(ValidateJobId("j-0123456789ab").ok());
  EXPECT_TRUE(ValidateJobId("my.job_1").ok());
  for (const char* hostile : {"", "../x", "a/b", "..", ".", ".hidden", "a..b", "-rf", "a b", "j\n1"}) {
    EXPECT_FALSE(ValidateJobId(hostile).ok()) << "'" << hostile << "'";
  }
  EXPECT_FALSE(ValidateJobId(std::string(65, 'a')).ok());
  HostCleanupRequest request;
  request.job_id = "../../etc";
  EXPECT_THAT(std::string(CleanJobOnHost(request).status().message()), HasSubstr("job id '../../etc'"));
  request.job_id = "j-1";
  request.shm_dir = "dev/shm";
  EXPECT_FALSE(CleanJobOnHost(request).ok());
  EXPECT_FALSE(RankRecord::Open("/tmp", "a/../../b", 1, 0).ok());
}

TEST_F(HostCleanupTest, RemovesWhatTheRanksRecordedAndTheWholeJob) {
  const std::string own0 = shm_ + "/vader_segment.vm.0.15c0001.0";
  const std::string own1 = shm_ + "/vader_segment.vm.0.15c0001.1";      // a rank killed before it recorded
  const std::string other_job = shm_ + "/vader_segment.vm.0.2ab0001.0";  // another mpirun's
  const std::string moex_segment = shm_ + "/moex-00077e7bf9106da6-1-1";
  const std::string other_moex = shm_ + "/moex-00077e7bf9106da7-0-1";
  for (const std::string& path : {own0, own1, other_job, moex_segment, other_moex}) Touch(path);
  const std::string cache = JobWeightCacheDir(shm_, "j-0123456789ab");
  fs::create_directories(cache + "/experts");
  Touch(cache + "/experts/e0.bin");
  const std::string other_cache = JobWeightCacheDir(shm_, "j-999999999999");
  fs::create_directories(other_cache);
  Record(1, 0, {own0, moex_segment});
  Record(2, 3, {moex_segment});  // gone already when read: fine

  absl::StatusOr<HostCleanupReport> report = CleanJobOnHost(Request());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok()) << report->Summary();
  EXPECT_EQ(report->segments_removed, 3) << report->Summary();
  EXPECT_TRUE(report->weight_cache_removed);
  EXPECT_TRUE(report->job_dir_removed);
  EXPECT_EQ(report->Summary(), "removed 3 shared-memory segments, the weight cache, the job directory");
  for (const std::string& gone : {own0, own1, moex_segment, cache, JobHostDir(shm_, "j-0123456789ab")}) {
    EXPECT_FALSE(fs::exists(gone)) << gone;
  }
  for (const std::string& kept : {other_job, other_moex, other_cache, victim_}) EXPECT_TRUE(fs::exists(kept)) << kept;

  // Idempotent: nothing left is no error.
  report = CleanJobOnHost(Request());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok());
  EXPECT_EQ(report->segments_removed, 0);
}

TEST_F(HostCleanupTest, RefusesForeignPathsAndNeverFollowsLinks) {
  const std::string link = shm_ + "/vader_segment.vm.0.abc.5";  // named like a segment, a link out
  fs::create_symlink(victim_, link);
  const std::string unnamed = shm_ + "/notes.txt";
  Touch(unnamed);
  const std::string outside_named = outside_ + "/vader_segment.vm.0.15c0001.0";
  Touch(outside_named);
  Record(1, 0, {"/etc/passwd", victim_, shm_ + "/../outside/victim", link, unnamed, outside_named, "relative/moex-x",
                shm_ + "/sub/vader_segment.vm.0.1.0"});
  absl::StatusOr<HostCleanupReport> report = CleanJobOnHost(Request());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->ok());
  EXPECT_EQ(report->segments_removed, 0);
  EXPECT_EQ(report->refused.size(), 8u) << report->Summary();
  EXPECT_THAT(report->Summary(), HasSubstr("/etc/passwd (recorded in "));
  EXPECT_THAT(report->Summary(), HasSubstr(link + ": not a regular file"));
  EXPECT_THAT(report->Summary(), HasSubstr("not named like a shared-memory segment"));
  for (const std::string& kept : {victim_, unnamed, outside_named, std::string("/etc/passwd")}) {
    EXPECT_TRUE(fs::exists(kept)) << kept;
  }
  EXPECT_TRUE(fs::is_symlink(link));
}

TEST_F(HostCleanupTest, RefusesAnotherUsersFile) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  const std::string theirs = shm_ + "/vader_segment.vm.0.15c0001.0";
  Touch(theirs);
  ASSERT_EQ(chown(theirs.c_str(), 65534, 65534), 0);
  Record(1, 0, {theirs});
  absl::StatusOr<HostCleanupReport> report = CleanJobOnHost(Request());
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->Summary(), HasSubstr(theirs + ": owned by uid 65534"));
  EXPECT_TRUE(fs::exists(theirs));
}

TEST_F(HostCleanupTest, RefusesAJobDirectoryOrCacheThatIsALink) {
  const std::string target = outside_ + "/dir";
  fs::create_directories(target);
  Touch(target + "/attempt-1.rank-0");
  Touch(target + "/keep");
  fs::create_symlink(target, JobHostDir(shm_, "j-0123456789ab"));
  fs::create_symlink(target, JobWeightCacheDir(shm_, "j-0123456789ab"));
  absl::StatusOr<HostCleanupReport> report = CleanJobOnHost(Request());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->refused.size(), 2u) << report->Summary();
  EXPECT_THAT(report->Summary(), HasSubstr("a symbolic link"));
  EXPECT_TRUE(fs::exists(target + "/keep"));
  EXPECT_TRUE(fs::exists(target + "/attempt-1.rank-0"));
  EXPECT_FALSE(RankRecord::Open(shm_, "j-0123456789ab", 1, 0).ok());  // a rank does not write through it either
}

TEST_F(HostCleanupTest, AnAttemptsCleanupLeavesTheNextAttemptAndTheCache) {
  const std::string first = shm_ + "/vader_segment.vm.0.1000001.0";
  const std::string second = shm_ + "/vader_segment.vm.0.2000001.0";
  Touch(first);
  Touch(second);
  const std::string cache = JobWeightCacheDir(shm_, "j-0123456789ab");
  fs::create_directories(cache);
  Record(1, 0, {first});
  Record(2, 0, {second});
  absl::StatusOr<HostCleanupReport> report = CleanJobOnHost(Request(1));
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok()) << report->Summary();
  EXPECT_FALSE(fs::exists(first));
  EXPECT_TRUE(fs::exists(second));
  EXPECT_TRUE(fs::exists(cache));
  EXPECT_FALSE(fs::exists(JobHostDir(shm_, "j-0123456789ab") + "/attempt-1.rank-0"));
  EXPECT_TRUE(fs::exists(JobHostDir(shm_, "j-0123456789ab") + "/attempt-2.rank-0"));
  EXPECT_FALSE(report->job_dir_removed);
}

TEST(HostCleanupArgvTest, NeverReadsAsARankOfTheJob) {
  HostCleanupRequest request;
  request.job_id = "j-0123456789ab";
  request.attempt = 2;
  request.weight_cache_root = "/dev/shm";
  const std::vector<std::string> argv = HostCleanupArgv("/usr/bin/moex", request);
  std::string line;
  for (const std::string& word : argv) line += word + " ";
  EXPECT_EQ(line, "/usr/bin/moex worker --cleanup --job-id j-0123456789ab --attempt 2 --weight-cache-root /dev/shm ");
  EXPECT_EQ(line.find("worker --job-id"), std::string::npos);
}

TEST(MappedMpiSegmentsTest, FindsOnlyMappedSegmentsInTheDirectory) {
  // This process maps no Open MPI segment.
  EXPECT_TRUE(MappedMpiSegments("/dev/shm").empty());
}

}  // namespace
}  // namespace moex::launcher
