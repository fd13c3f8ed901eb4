// The ranks' calls (ClusterService) from hostile or stray callers, against a
// controller in this process running real mpirun jobs of `moex worker`: a
// rank outside the attempt's world, a step from the future or from the past,
// a call from an attempt that has ended. Each is refused, naming the job,
// the attempt, the rank and the bad value, and the job runs on unharmed.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/rank_metadata.h"
#include "moex/cluster/rank_secret.h"
#include "moex/cluster/server.h"
#include "moex/v1/cluster.grpc.pb.h"

namespace moex::cluster {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using moex::v1::Job;
using moex::v1::JobState;

constexpr int64_t kHugeStep = int64_t{1} << 62;

class RankCallsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_rank_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override {
    controller_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Start(double heartbeat_timeout_seconds, std::string worker_binary = "") {
    ControllerOptions options;
    options.state_dir = dir_.string();
    options.listen = "127.0.0.1:0";
    const char* worker = std::getenv("MOEX_TEST_WORKER_BINARY");  // see controller_test.cc
    options.moex_binary = worker != nullptr ? worker : MOEX_BINARY;
    if (!worker_binary.empty()) options.moex_binary = worker_binary;
    options.cancel_grace_seconds = 2;
    options.heartbeat_timeout_seconds = heartbeat_timeout_seconds;
    options.limits.max_world_size = 8;
    auto controller = Controller::Start(std::move(options));
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = std::move(*controller);
    auto channel =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(controller_->port()), grpc::InsecureChannelCredentials());
    ranks_ = moex::v1::ClusterService::NewStub(channel);
  }

  // A raw call's context; `attempt` > 0 says which attempt it comes from.
  // `job_id`: the call carries that job's rank secret, as its ranks' do;
  // `secret` instead: that one ("": none).
  std::unique_ptr<grpc::ClientContext> Context(int attempt, const std::string& job_id,
                                               std::optional<std::string> secret = std::nullopt) const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (attempt > 0) context->AddMetadata(kAttemptMetadata, std::to_string(attempt));
    if (!secret) secret = RankKey::LoadOrCreate(dir_.string())->SecretFor(job_id);
    if (!secret->empty()) context->AddMetadata(kRankSecretMetadata, *secret);
    return context;
  }

  Job Submit(int world, int steps, int max_restarts = 0) {
    moex::v1::JobSpec spec;
    spec.set_name("rank-calls");
    spec.set_world_size(world);
    spec.set_model("tiny");
    spec.set_steps(steps);
    spec.set_tokens_per_rank(32);
    spec.set_max_restarts(max_restarts);
    absl::StatusOr<Job> job = controller_->jobs().Submit(spec);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : Job();
  }

  // Polls the job until `done` says so or it ends.
  template <typename Done>
  Job WaitUntil(const std::string& id, Done done, double seconds = 60) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    Job job;
    while (std::chrono::steady_clock::now() < until) {
      job = *controller_->jobs().Get(id);
      if (done(job) || IsTerminal(job.state())) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return job;
  }

  grpc::Status Heartbeat(const std::string& id, int rank, int64_t step, int attempt = 0) {
    moex::v1::HeartbeatRequest request;
    request.set_job_id(id);
    request.set_rank(rank);
    request.set_step(step);
    moex::v1::HeartbeatResponse response;
    return ranks_->Heartbeat(Context(attempt, id).get(), request, &response);
  }

  grpc::Status ReportStep(const std::string& id, int rank, int64_t step, int attempt = 0) {
    moex::v1::ReportStepRequest request;
    request.set_job_id(id);
    request.set_rank(rank);
    request.set_step(step);
    request.mutable_metrics()->set_steps_done(step);
    request.add_tokens_per_expert(1);  // a load that would replace the job's
    moex::v1::ReportStepResponse response;
    return ranks_->ReportStep(Context(attempt, id).get(), request, &response);
  }

  std::filesystem::path dir_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<moex::v1::ClusterService::Stub> ranks_;
};

TEST_F(RankCallsTest, BadRanksAndStepsAreRefusedAndTheJobStillSucceeds) {
  Start(/*heartbeat_timeout_seconds=*/2);
  constexpr int kSteps = 5000;  // several seconds: it outlasts the heartbeat timeout
  const Job job = Submit(2, kSteps);
  Job running = WaitUntil(job.id(), [](const Job& j) { return j.metrics().steps_done() >= 2; });
  ASSERT_EQ(running.state(), moex::v1::JOB_STATE_RUNNING) << running.message();
  ASSERT_GE(running.metrics().steps_done(), 2);

  // Today's code took rank 999's heartbeat, and failed the job when that
  // rank then fell silent.
  grpc::Status status = Heartbeat(job.id(), 999, 0);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr(job.id()), HasSubstr("attempt 1"), HasSubstr("rank 999"), HasSubstr("outside")));
  EXPECT_EQ(Heartbeat(job.id(), -1, 0).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  status = Heartbeat(job.id(), 1, kHugeStep);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("rank 1"), HasSubstr("step 4611686018427387904")));
  status = Heartbeat(job.id(), 0, 0, /*attempt=*/7);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("attempt 7 was never launched"));

  // A step from the future would freeze the load figures (every later
  // report looks older); one from the past would rewind them.
  status = ReportStep(job.id(), 0, kHugeStep);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr(job.id()), HasSubstr("attempt 1"), HasSubstr("rank 0"),
                                            HasSubstr("step 4611686018427387904 is past the job's 5000 steps")));
  status = ReportStep(job.id(), 0, 1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr("rank 0"), HasSubstr("step 1 goes back from step")));
  status = ReportStep(job.id(), 5, kSteps);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("rank 5 is outside the attempt's 2 ranks"));

  // Past the heartbeat timeout the job still runs (rank 999 is not missed),
  // and it ends with every step and its load counted.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_NE(controller_->jobs().Get(job.id())->state(), moex::v1::JOB_STATE_FAILED);
  const Job ended = WaitUntil(job.id(), [](const Job&) { return false; }, 120);
  EXPECT_EQ(ended.state(), moex::v1::JOB_STATE_SUCCEEDED) << ended.message();
  EXPECT_EQ(ended.metrics().steps_done(), kSteps);
  EXPECT_EQ(ended.load().steps(), kSteps);
  EXPECT_EQ(ended.attempts_size(), 1);
}

TEST_F(RankCallsTest, CallsForAnEndedAttemptAreRefused) {
  Start(/*heartbeat_timeout_seconds=*/30);
  const Job job = Submit(2, 100000, /*max_restarts=*/1);
  Job running = WaitUntil(job.id(), [](const Job& j) { return j.metrics().steps_done() > 0; });
  ASSERT_EQ(running.state(), moex::v1::JOB_STATE_RUNNING) << running.message();
  int victim = 0;
  for (const auto& rank : running.ranks()) {
    if (rank.rank() == 1) victim = rank.pid();
  }
  ASSERT_GT(victim, 0);
  kill(victim, SIGKILL);
  Job relaunched = WaitUntil(job.id(), [](const Job& j) {
    return j.attempts_size() == 2 && j.state() == moex::v1::JOB_STATE_RUNNING;
  });
  ASSERT_EQ(relaunched.attempts_size(), 2) << relaunched.message();
  ASSERT_EQ(relaunched.state(), moex::v1::JOB_STATE_RUNNING) << relaunched.message();

  // A rank of attempt 1 that outlived it.
  grpc::Status status = Heartbeat(job.id(), 0, 0, /*attempt=*/1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(),
              AllOf(HasSubstr(job.id()), HasSubstr("attempt 1 rank 0"), HasSubstr("attempt 1 has ended (attempt 2 runs)")));
  EXPECT_EQ(ReportStep(job.id(), 0, relaunched.metrics().steps_done(), 1).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  moex::v1::RegisterRankRequest again;
  again.set_job_id(job.id());
  again.set_rank(1);
  again.set_world_size(2);
  moex::v1::RegisterRankResponse registered;
  EXPECT_EQ(ranks_->RegisterRank(Context(1, job.id()).get(), again, &registered).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // Attempt 2's own ranks are unaffected: the job keeps going.
  const int64_t before = relaunched.metrics().steps_done();
  Job later = WaitUntil(job.id(), [&](const Job& j) { return j.metrics().steps_done() > before + 2; });
  EXPECT_EQ(later.state(), moex::v1::JOB_STATE_RUNNING) << later.message();

  // A job that has ended: every attempt has.
  ASSERT_TRUE(controller_->jobs().Cancel(job.id()).ok());
  const Job cancelled = WaitUntil(job.id(), [](const Job&) { return false; }, 30);
  ASSERT_EQ(cancelled.state(), moex::v1::JOB_STATE_CANCELLED);
  status = Heartbeat(job.id(), 0, 0);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(status.error_message(), AllOf(HasSubstr(job.id()), HasSubstr("attempt 2 rank 0"),
                                            HasSubstr("the job has ended (JOB_STATE_CANCELLED)")));
  EXPECT_EQ(ReportStep(job.id(), 0, cancelled.metrics().steps_done()).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

// A rank registered from another host is never signalled by its pid: that
// pid means nothing here (hosts have pid spaces of their own), and a process
// of this host that happens to hold it, even one whose command line carries
// the job id, is left alone. The launcher stops remote ranks.
TEST_F(RankCallsTest, ARankOnAnotherHostIsNeverSignalledByPid) {
  std::filesystem::create_directories(dir_);
  const std::string fake = (dir_ / "quiet-worker.sh").string();
  {
    std::ofstream script(fake);
    script << "#!/bin/sh\nexec sleep 300\n";  // a rank that never registers by itself
  }
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  Start(/*heartbeat_timeout_seconds=*/30, fake);
  const Job job = Submit(/*world=*/1, /*steps=*/10);
  ASSERT_FALSE(job.id().empty());
  // A process of this host with the job id on its command line, as a rank
  // on another host would have, with the same pid by chance.
  const pid_t decoy = fork();
  ASSERT_GE(decoy, 0);
  if (decoy == 0) {
    setpgid(0, 0);  // its sleep goes with it at the end
    execl("/bin/sh", "sh", "-c", "sleep 300", "sh", "--job-id", job.id().c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  moex::v1::RegisterRankRequest request;
  request.set_job_id(job.id());
  request.set_rank(0);
  request.set_world_size(1);
  request.set_host("another-host");
  request.set_pid(decoy);
  moex::v1::RegisterRankResponse response;
  ASSERT_TRUE(ranks_->RegisterRank(Context(1, job.id()).get(), request, &response).ok());
  ASSERT_TRUE(controller_->jobs().Cancel(job.id()).ok());
  const Job ended = WaitUntil(job.id(), [](const Job&) { return false; }, 30);
  EXPECT_EQ(ended.state(), moex::v1::JOB_STATE_CANCELLED) << ended.message();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int status = 0;
  EXPECT_EQ(waitpid(decoy, &status, WNOHANG), 0) << "the decoy was signalled: " << status;
  kill(-decoy, SIGKILL);
  waitpid(decoy, &status, 0);
}

// Ranks authenticate as ranks of their own job (item 6): a rank call with no
// rank secret, or with another job's, is refused, naming the call and the
// job; the job's own ranks, which carry it, run on.
TEST_F(RankCallsTest, RankCallsNeedTheJobsOwnSecret) {
  Start(/*heartbeat_timeout_seconds=*/30);
  const Job job = Submit(/*world=*/2, /*steps=*/3000);
  const Job other = Submit(/*world=*/2, /*steps=*/3000);
  WaitUntil(job.id(), [](const Job& j) { return j.state() == moex::v1::JOB_STATE_RUNNING; });
  moex::v1::HeartbeatRequest request;
  request.set_job_id(job.id());
  request.set_rank(0);
  moex::v1::HeartbeatResponse response;
  grpc::Status none = ranks_->Heartbeat(Context(1, job.id(), "").get(), request, &response);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(none.error_message(), AllOf(HasSubstr("Heartbeat for job " + job.id()), HasSubstr("no rank secret")));
  const std::string others = RankKey::LoadOrCreate(dir_.string())->SecretFor(other.id());
  grpc::Status wrong = ranks_->Heartbeat(Context(1, job.id(), others).get(), request, &response);
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(wrong.error_message(), HasSubstr("not the job's rank secret"));
  moex::v1::ReportStepRequest report;
  report.set_job_id(job.id());
  moex::v1::ReportStepResponse reported;
  EXPECT_EQ(ranks_->ReportStep(Context(1, job.id(), "").get(), report, &reported).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(Heartbeat(job.id(), 0, 0, 1).error_code(), grpc::StatusCode::PERMISSION_DENIED);  // with the secret
  ASSERT_TRUE(controller_->jobs().Cancel(job.id()).ok());
  ASSERT_TRUE(controller_->jobs().Cancel(other.id()).ok());
  EXPECT_EQ(WaitUntil(job.id(), [](const Job&) { return false; }).state(), moex::v1::JOB_STATE_CANCELLED);
}

}  // namespace
}  // namespace moex::cluster
