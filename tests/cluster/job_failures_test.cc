// What the controller makes of an attempt that ends badly, from the words
// of the launcher's log (a stand-in mpirun prints canned Open MPI and srun
// lines, then exits) and from heartbeats: a whole host lost is named with
// its ranks and recorded; a single rank's death is not a host lost; when
// every rank goes silent no host is blamed; a host whose ranks alone went
// silent is.
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/job_manager.h"
#include "moex/worker/worker_session.h"

namespace moex::cluster {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using moex::v1::Job;

class JobFailuresTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moex_failures_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // The stand-in: a cleanup step succeeds at once; a launch waits, prints
    // the canned log and exits 9, as mpirun does when a rank was killed.
    const std::string fake = (dir_ / "fake-mpirun").string();
    std::ofstream(fake) << "#!/bin/sh\ncase \"$*\" in *--cleanup*) exit 0 ;; esac\n"
                        << "sleep \"$MOEX_FAKE_DELAY\"\ncat \"$MOEX_FAKE_LOG\"\nexit 9\n";
    fs::permissions(fake, fs::perms::owner_all);
    std::ofstream(dir_ / "hosts") << "h0 slots=2\nh1 slots=2\n";
    ControllerOptions options;
    options.state_dir = (dir_ / "state").string();
    options.moex_binary = "/bin/true";
    options.heartbeat_timeout_seconds = 1;
    options.start_timeout_seconds = 60;
    options.launcher.mpirun = fake;
    options.launcher.hostfile = (dir_ / "hosts").string();
    auto jobs = JobManager::Create(options);
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    jobs_ = std::move(*jobs);
    jobs_->SetAdvertisedAddress("10.0.0.1:1");
  }
  void TearDown() override {
    stop_heartbeats_ = true;
    for (std::thread& beating : heartbeats_) beating.join();
    jobs_.reset();
    fs::remove_all(dir_);
  }

  // Submits a 4-rank job whose launch prints `log` after `delay` seconds,
  // and registers its ranks: 0, 1 on h0; 2, 3 on h1; `beating` keep sending
  // heartbeats.
  std::string Run(const std::string& log, int delay, std::vector<int> beating = {0, 1, 2, 3}, int max_restarts = 0) {
    std::ofstream(dir_ / "canned.log") << log;
    setenv("MOEX_FAKE_LOG", (dir_ / "canned.log").c_str(), 1);
    setenv("MOEX_FAKE_DELAY", std::to_string(delay).c_str(), 1);
    moex::v1::JobSpec spec;
    spec.set_name("failures");
    spec.set_world_size(4);
    spec.set_model("tiny");
    spec.set_steps(10);
    spec.set_max_restarts(max_restarts);
    absl::StatusOr<Job> job = jobs_->Submit(spec);
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return "";
    for (int rank = 0; rank < 4; ++rank) {
      moex::v1::RegisterRankRequest request;
      request.set_job_id(job->id());
      request.set_rank(rank);
      request.set_world_size(4);
      request.set_host(rank < 2 ? "h0" : "h1");
      request.set_pid(1);  // not this host's: never signalled
      EXPECT_TRUE(jobs_->RegisterRank(request, 1).ok());
    }
    KeepHeartbeating(job->id(), std::move(beating));
    return job->id();
  }

  Job WaitEnded(const std::string& id, double seconds = 30) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    Job job;
    while (std::chrono::steady_clock::now() < until) {
      job = *jobs_->Get(id);
      if (IsTerminal(job.state())) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return job;
  }

  void KeepHeartbeating(const std::string& id, std::vector<int> ranks) {
    heartbeats_.emplace_back([this, id, ranks] {
      while (!stop_heartbeats_) {
        for (int rank : ranks) {
          moex::v1::HeartbeatRequest request;
          request.set_job_id(id);
          request.set_rank(rank);
          (void)jobs_->Heartbeat(request, 1);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }

  fs::path dir_;
  std::unique_ptr<JobManager> jobs_;
  std::vector<std::thread> heartbeats_;
  std::atomic<bool> stop_heartbeats_{false};
};

TEST_F(JobFailuresTest, ADaemonLostWithItsHostsRanksNamesTheHost) {
  const std::string id = Run("ORTE was unable to reliably start one or more daemons.\n"
                             "  Local host: h0\n  Local PID:  12\n  Peer host:  h1\n",
                             1);
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.state(), moex::v1::JOB_STATE_FAILED);
  EXPECT_THAT(job.message(), HasSubstr("host h1 was lost (ranks 2, 3, every rank on it): mpirun's daemon on h1 failed"));
  ASSERT_EQ(job.attempts_size(), 1);
  EXPECT_THAT(job.attempts(0).lost_hosts(), ElementsAre("h1"));
}

TEST_F(JobFailuresTest, OneRankKilledIsNotAHostLost) {
  // The daemon on h1 lived to report its rank's death; the survivors say
  // they lost every rank of h1 (they waited on its leader): still one rank.
  const std::string id =
      Run("moex run: rank 0: error: rank 0: dispatch timed out [ranks 2, 3 on host h1 (every rank of it)]\n"
          "mpirun noticed that process rank 2 with PID 0 on node h1 exited on signal 9 (Killed).\n",
          1);
  const Job job = WaitEnded(id);
  EXPECT_THAT(job.message(), HasSubstr("rank 2 (pid 1 on h1) was killed by signal 9 (Killed)"));
  EXPECT_THAT(job.message(), Not(HasSubstr("was lost")));
  EXPECT_THAT(job.attempts(0).lost_hosts(), IsEmpty());
}

TEST_F(JobFailuresTest, SrunTaskDeathAndLauncherErrorsAreNamed) {
  std::string id = Run("srun: error: h1: task 3: Segmentation fault (core dumped)\n", 1);
  EXPECT_THAT(WaitEnded(id).message(), HasSubstr("rank 3 (on h1) ended: Segmentation fault (core dumped)"));
  id = Run("srun: error: Unable to allocate resources: Requested node configuration is not available\n", 0);
  EXPECT_THAT(WaitEnded(id).message(),
              HasSubstr("srun: error: Unable to allocate resources: Requested node configuration is not available"));
}

// srun: the ranks of h0 failed as a peer hung up (SIGPIPE, an exit 1),
// nothing at all was heard from h1's (srun's daemon there went with them):
// h1 is lost. Had srun ended them, it would have said so, and then it is
// one rank's failure, no host lost.
TEST_F(JobFailuresTest, UnderSrunAHostNeverHeardFromWhileTheOthersFailedIsLost) {
  std::string id = Run("srun: error: h0: task 0: Broken pipe\n"
                       "srun: error: h0: task 1: Exited with exit code 1\n",
                       1);
  Job job = WaitEnded(id);
  EXPECT_THAT(job.message(), HasSubstr("host h1 was lost (ranks 2, 3, every rank on it): no rank of h1 was heard from"));
  EXPECT_THAT(job.attempts(0).lost_hosts(), ElementsAre("h1"));
  id = Run("moex run: rank 0: error: rank 0: --input has shape [3]\n"
           "srun: error: h0: task 1: Exited with exit code 1\n"
           "srun: error: h0: task 0: Exited with exit code 1\n"
           "srun: error: h1: tasks 2-3: Killed\n",
           1);
  job = WaitEnded(id);
  EXPECT_THAT(job.message(), Not(HasSubstr("was lost")));
  EXPECT_THAT(job.attempts(0).lost_hosts(), IsEmpty());
  // h1's ranks finished (srun prints nothing for an exit 0) while rank 0's
  // --check failed: its own failure, no host lost.
  id = Run("moex run: rank 0: error: --check failed: relative error 0.5 > 0.0001\n"
           "srun: error: h0: task 0: Exited with exit code 1\n",
           1);
  job = WaitEnded(id);
  EXPECT_THAT(job.message(), HasSubstr("rank 0 (on h0) ended: Exited with exit code 1"));
  EXPECT_THAT(job.message(), Not(HasSubstr("was lost")));
  EXPECT_THAT(job.attempts(0).lost_hosts(), IsEmpty());
}

TEST_F(JobFailuresTest, EveryRankSilentBlamesNoHost) {
  const std::string id = Run("", 60, {});
  const Job job = WaitEnded(id);
  EXPECT_THAT(job.message(), HasSubstr("every rank of the job is silent"));
  EXPECT_THAT(job.attempts(0).lost_hosts(), IsEmpty());
}

TEST_F(JobFailuresTest, AHostWhoseRanksAloneWentSilentIsLost) {
  const std::string id = Run("", 60, {0, 1});
  const Job job = WaitEnded(id);
  EXPECT_THAT(job.message(), HasSubstr("host h1 was lost: ranks 2, 3 (every rank on it) sent no heartbeat"));
  EXPECT_THAT(job.attempts(0).lost_hosts(), ElementsAre("h1"));
}

// What a rank reports of its own failure (ReportFailure), as the worker
// sends it before exiting.
absl::Status Report(JobManager& jobs, const std::string& id, int rank, moex::v1::EndReason reason,
                    std::vector<int> waiting_for, bool stopped = false, const std::string& message = "boom") {
  moex::v1::ReportFailureRequest request;
  request.set_job_id(id);
  request.mutable_failure()->set_rank(rank);
  request.mutable_failure()->set_reason(reason);
  request.mutable_failure()->set_message(message);
  for (int r : waiting_for) request.mutable_failure()->add_waiting_for(r);
  request.mutable_failure()->set_stopped(stopped);
  return jobs.ReportFailure(request, 1);
}

// The log names rank 0 (its error line comes first) and no host; the ranks'
// own reports say ranks 0 and 1 were waiting for 2 and 3, who said nothing:
// the data decides (h1 lost), and the attempt carries it as fields.
TEST_F(JobFailuresTest, TheRanksReportsDecideOverTheLog) {
  const std::string id = Run("moex run: rank 0: error: dispatch timed out\n", 2);
  ASSERT_TRUE(Report(*jobs_, id, 0, moex::v1::END_REASON_RANK_LOST, {2, 3}).ok());
  ASSERT_TRUE(Report(*jobs_, id, 1, moex::v1::END_REASON_RANK_LOST, {3, 2}, /*stopped=*/true).ok());
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.end_reason(), moex::v1::END_REASON_HOST_LOST);
  ASSERT_EQ(job.attempts_size(), 1);
  const moex::v1::Attempt& a = job.attempts(0);
  EXPECT_EQ(a.reason(), moex::v1::END_REASON_HOST_LOST);
  EXPECT_THAT(a.lost_ranks(), ElementsAre(2, 3));
  EXPECT_THAT(a.lost_hosts(), ElementsAre("h1"));
  EXPECT_EQ(a.launcher_exit_code(), 9);  // the stand-in exits 9, as mpirun does
  ASSERT_EQ(a.rank_failures_size(), 2);
  EXPECT_THAT(a.rank_failures(1).waiting_for(), ElementsAre(3, 2));
  EXPECT_THAT(job.message(), HasSubstr("ranks 2, 3 went away without a word while ranks 0, 1 waited for them"));
}

// One rank of h1 went away; its host-mate reported: one rank lost, no host.
TEST_F(JobFailuresTest, AReportedLostRankIsNotAHost) {
  const std::string id = Run("", 2);
  for (int rank : {0, 1, 2}) ASSERT_TRUE(Report(*jobs_, id, rank, moex::v1::END_REASON_RANK_LOST, {3}).ok());
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.end_reason(), moex::v1::END_REASON_RANK_LOST);
  EXPECT_THAT(job.attempts(0).lost_ranks(), ElementsAre(3));
  EXPECT_THAT(job.attempts(0).lost_hosts(), IsEmpty());
}

// A hung rank that the launcher then stopped reports only that it was
// stopped: it is still the one the others waited for. And a rank's own
// error does not outweigh a silent rank the others were waiting for (a
// dying peer's short receive looks like a rank's own DATA_LOSS).
TEST_F(JobFailuresTest, AStoppedRankThatOthersWaitedForIsStillBlamed) {
  const std::string id = Run("", 2);
  ASSERT_TRUE(Report(*jobs_, id, 3, moex::v1::END_REASON_RANK_LOST, {}, /*stopped=*/true).ok());
  ASSERT_TRUE(Report(*jobs_, id, 0, moex::v1::END_REASON_RANK_LOST, {3}).ok());
  ASSERT_TRUE(Report(*jobs_, id, 1, moex::v1::END_REASON_RANK_ERROR, {}, false, "short receive").ok());
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.end_reason(), moex::v1::END_REASON_RANK_LOST);
  EXPECT_THAT(job.attempts(0).lost_ranks(), ElementsAre(3));
}

// A rank that refused its input fails the job at once, whatever restarts
// it may have: the same input would be refused again.
TEST_F(JobFailuresTest, BadInputIsNeverRetried) {
  const std::string id = Run("", 2, {0, 1, 2, 3}, /*max_restarts=*/3);
  ASSERT_TRUE(Report(*jobs_, id, 2, moex::v1::END_REASON_BAD_INPUT, {}, false,
                     "'w.safetensors' has no tensor 'model.layers.1.mlp.gate.weight'").ok());
  ASSERT_TRUE(Report(*jobs_, id, 0, moex::v1::END_REASON_RANK_LOST, {2}, /*stopped=*/true).ok());
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.state(), moex::v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.end_reason(), moex::v1::END_REASON_BAD_INPUT);
  EXPECT_EQ(job.attempts_size(), 1);
  EXPECT_THAT(job.message(), HasSubstr("rank 2 reported: 'w.safetensors' has no tensor"));
  EXPECT_THAT(job.message(), HasSubstr("not restarted"));
  EXPECT_THAT(job.attempts(0).lost_ranks(), IsEmpty());
}

TEST_F(JobFailuresTest, AReportARankCannotGiveIsRefused) {
  const std::string id = Run("", 5);
  EXPECT_EQ(Report(*jobs_, id, 0, moex::v1::END_REASON_SUCCEEDED, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Report(*jobs_, id, 0, static_cast<moex::v1::EndReason>(999), {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Report(*jobs_, id, 0, moex::v1::END_REASON_RANK_LOST, {4}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Report(*jobs_, id, 0, moex::v1::END_REASON_RANK_LOST, {0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Report(*jobs_, id, 9, moex::v1::END_REASON_RANK_LOST, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Report(*jobs_, "j-nope", 0, moex::v1::END_REASON_RANK_LOST, {}).code(), absl::StatusCode::kNotFound);
  // Nothing refused was kept: the log alone decides (no rank named).
  const Job job = WaitEnded(id);
  EXPECT_EQ(job.attempts(0).rank_failures_size(), 0);
}

TEST_F(JobFailuresTest, SilenceAndTheLogGiveTheirReasons) {
  std::string id = Run("", 60, {0, 1});
  EXPECT_EQ(WaitEnded(id).end_reason(), moex::v1::END_REASON_HOST_LOST);
  id = Run("", 60, {});
  EXPECT_EQ(WaitEnded(id).end_reason(), moex::v1::END_REASON_RANK_HUNG);
  id = Run("mpirun noticed that process rank 2 with PID 0 on node h1 exited on signal 9 (Killed).\n", 1);
  Job job = WaitEnded(id);
  EXPECT_EQ(job.end_reason(), moex::v1::END_REASON_RANK_LOST);
  EXPECT_THAT(job.attempts(0).lost_ranks(), ElementsAre(2));
  id = Run("srun: error: Unable to allocate resources: Requested node configuration is not available\n", 0);
  EXPECT_EQ(WaitEnded(id).end_reason(), moex::v1::END_REASON_LAUNCHER_ERROR);
}

// How a rank classes its own failure before reporting it.
TEST(FailureReasonOfTest, InputMemoryPeersAndTheRest) {
  using worker::FailureReasonOf;
  EXPECT_EQ(FailureReasonOf(absl::InvalidArgumentError("--input has shape [3]"), false, false),
            moex::v1::END_REASON_BAD_INPUT);
  EXPECT_EQ(FailureReasonOf(absl::NotFoundError("no tensor"), false, false), moex::v1::END_REASON_BAD_INPUT);
  // A transport's short receive from a dying peer is DATA_LOSS too: not the input's fault.
  EXPECT_EQ(FailureReasonOf(absl::DataLossError("short receive"), false, false), moex::v1::END_REASON_RANK_ERROR);
  EXPECT_EQ(FailureReasonOf(absl::ResourceExhaustedError("out of memory"), false, false),
            moex::v1::END_REASON_OUT_OF_MEMORY);
  EXPECT_EQ(FailureReasonOf(absl::InternalError("--check failed"), false, false), moex::v1::END_REASON_RANK_ERROR);
  // Waiting for others, or stopped by the launcher: another's failure.
  EXPECT_EQ(FailureReasonOf(absl::DeadlineExceededError("timed out"), true, false), moex::v1::END_REASON_RANK_LOST);
  EXPECT_EQ(FailureReasonOf(absl::InvalidArgumentError("x"), false, true), moex::v1::END_REASON_RANK_LOST);
  EXPECT_EQ(FailureReasonOf(absl::UnavailableError("connection reset by peer"), false, false),
            moex::v1::END_REASON_RANK_LOST);
}

}  // namespace
}  // namespace moex::cluster
