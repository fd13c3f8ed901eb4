// A controller whose store grew (issue #19 item 5): ListJobs pages stay
// under a client's 4 MiB limit however large the jobs (before: twelve
// 256-point bench jobs broke `moex job list` for good), a spec padded with
// unknown fields is stored without them, and retention and DeleteJob remove
// ended jobs with their logs, never a running one.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/job_list.h"
#include "moex/cluster/job_store.h"
#include "moex/cluster/server.h"
#include "moex/v1/job.grpc.pb.h"

namespace moex::cluster {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int64_t kDayMs = 86400 * 1000;

class JobListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("moex_list_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(state() / "logs");
  }
  void TearDown() override {
    controller_.reset();
    if (group_ > 0) {
      kill(-group_, SIGKILL);
      waitpid(group_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }
  fs::path state() const { return dir_ / "state"; }

  void Start(int keep_jobs = 0, double keep_days = 0) {
    ControllerOptions options;
    options.state_dir = state().string();
    options.listen = "127.0.0.1:0";
    options.heartbeat_timeout_seconds = 120;  // an adopted job stays RUNNING through the test
    options.keep_jobs = keep_jobs;
    options.keep_days = keep_days;
    const char* worker = std::getenv("MOEX_TEST_WORKER_BINARY");
    options.moex_binary = worker != nullptr ? worker : MOEX_BINARY;
    auto controller = Controller::Start(options);
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = std::move(*controller);
    // A client as `moex job` makes it: gRPC's default 4 MiB receive limit.
    stub_ = moex::v1::JobService::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(controller_->port()), grpc::InsecureChannelCredentials()));
  }
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return context;
  }

  // Writes records straight into the store, as a controller that ran them
  // would have left them; each ended job gets a log.
  void Record(const std::vector<moex::v1::Job>& jobs, pid_t group = 0) {
    auto store = JobStore::Open(state().string());
    ASSERT_TRUE(store.ok()) << store.status();
    for (const moex::v1::Job& job : jobs) {
      ASSERT_TRUE((*store)->Put(job, group).ok());
      std::ofstream(state() / "logs" / (job.id() + ".log")) << "log of " << job.id() << "\n";
    }
  }
  static moex::v1::Job Ended(const std::string& id, int64_t submit_ms, int64_t end_ms) {
    moex::v1::Job job;
    job.set_id(id);
    job.set_state(moex::v1::JOB_STATE_SUCCEEDED);
    job.mutable_spec()->set_name(id);
    job.mutable_spec()->set_world_size(2);
    job.mutable_spec()->set_steps(1);
    job.set_submit_time_unix_ms(submit_ms);
    job.set_end_time_unix_ms(end_ms);
    return job;
  }
  // A bench job of `points` measured points, each with a `json` record of
  // `json_bytes`.
  static moex::v1::Job BenchJob(const std::string& id, int64_t submit_ms, int points, size_t json_bytes) {
    moex::v1::Job job = Ended(id, submit_ms, submit_ms + 1000);
    job.mutable_spec()->mutable_bench()->add_tokens_per_rank(1024);
    for (int p = 0; p < points; ++p) {
      moex::v1::BenchPointResult* point = job.add_bench();
      point->set_tokens_per_rank(16 + p);
      point->set_ratio(1.5);
      point->set_json(std::string(json_bytes, 'j'));
    }
    return job;
  }
  // A process group that passes for job `id`'s launcher: its leader's
  // command line carries "worker --job-id ID ".
  pid_t FakeLauncher(const std::string& id) {
    const pid_t child = fork();
    if (child == 0) {
      setsid();
      execl("/bin/sh", "sh", "-c", "while :; do sleep 1; done", "worker", "--job-id", id.c_str(), "x",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 200 && getpgid(child) != child; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // exec'd
    group_ = child;
    return child;
  }
  bool Exists(const std::string& id) {
    moex::v1::GetJobRequest request;
    request.set_id(id);
    moex::v1::Job job;
    return stub_->GetJob(Context().get(), request, &job).ok();
  }

  fs::path dir_;
  pid_t group_ = 0;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<moex::v1::JobService::Stub> stub_;
};

// Sixteen 256-point bench jobs (about 400 KiB each) and one whose points
// alone weigh 5 MiB: every page arrives, under 3 MiB, every job once, in
// order; the giant one cut down, saying so.
TEST_F(JobListTest, PagesStayUnderTheClientsLimitHoweverLargeTheJobs) {
  std::vector<moex::v1::Job> jobs;
  for (int i = 0; i < 16; ++i) jobs.push_back(BenchJob("j-b" + std::to_string(100 + i), 1000 + i, 256, 1500));
  jobs.push_back(BenchJob("j-giant", 2000, 256, 20000));
  Record(jobs);
  Start();
  for (int page_size : {0, 1000}) {
    moex::v1::ListJobsRequest request;
    request.set_page_size(page_size);
    std::vector<std::string> seen;
    int pages = 0;
    size_t listed_bytes = 0;
    do {
      moex::v1::ListJobsResponse page;
      grpc::Status status = stub_->ListJobs(Context().get(), request, &page);
      ASSERT_TRUE(status.ok()) << status.error_message();
      ASSERT_GT(page.jobs_size(), 0);
      EXPECT_LE(page.ByteSizeLong(), kListReplyMaxBytes);
      listed_bytes += page.ByteSizeLong();
      for (const moex::v1::Job& job : page.jobs()) {
        seen.push_back(job.id());
        if (job.id() == "j-giant") {
          EXPECT_TRUE(job.bench_json_omitted());
          EXPECT_EQ(job.bench_points_omitted(), 0);  // dropping the json was enough
          EXPECT_EQ(job.bench_size(), 256);
          EXPECT_EQ(job.bench(0).json(), "");
          EXPECT_EQ(job.bench(0).ratio(), 1.5);
        } else {
          EXPECT_FALSE(job.bench_json_omitted());
          EXPECT_EQ(job.bench(255).json().size(), 1500u);
        }
      }
      request.set_page_token(page.next_page_token());
      ++pages;
    } while (!request.page_token().empty() && pages < 100);
    EXPECT_GT(listed_bytes, size_t{4} << 20);  // one reply would have passed the client's 4 MiB
    EXPECT_GE(pages, 2);
    std::vector<std::string> expected;
    for (const moex::v1::Job& job : jobs) expected.push_back(job.id());
    EXPECT_EQ(seen, expected);
  }
  // GetJob answers a job whole.
  moex::v1::GetJobRequest get;
  get.set_id("j-b100");
  moex::v1::Job whole;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &whole).ok());
  EXPECT_EQ(whole.bench_size(), 256);
}

TEST(TrimForListTest, PointsAreLeftOutWhenDroppingTheirJsonIsNotEnough) {
  moex::v1::Job job;
  job.set_id("j-1");
  for (int p = 0; p < 100; ++p) {
    moex::v1::BenchPointResult* point = job.add_bench();
    point->set_json(std::string(100, 'j'));
    point->set_path(std::string(1000, 'p'));
  }
  TrimForList(&job, 50000);
  EXPECT_LE(job.ByteSizeLong(), 50000u);
  EXPECT_TRUE(job.bench_json_omitted());
  EXPECT_GT(job.bench_points_omitted(), 40);
  EXPECT_EQ(job.bench_size() + job.bench_points_omitted(), 100);
  moex::v1::Job small;
  small.add_bench()->set_json("{}");
  TrimForList(&small, 50000);
  EXPECT_FALSE(small.bench_json_omitted());
  EXPECT_EQ(small.bench(0).json(), "{}");
}

// A spec padded with a field this controller does not know (at the top and
// inside `rebalance`) is stored and echoed without it.
TEST_F(JobListTest, UnknownFieldsAreDroppedAtSubmit) {
  Start();
  moex::v1::JobSpec spec;
  spec.set_name("padded");
  spec.set_world_size(1);
  spec.set_model("tiny");
  spec.set_steps(1);
  spec.set_tokens_per_rank(8);
  const std::string padding(100000, 'u');
  spec.GetReflection()->MutableUnknownFields(&spec)->AddLengthDelimited(999, padding);
  moex::v1::RebalanceSpec* rebalance = spec.mutable_rebalance();
  rebalance->GetReflection()->MutableUnknownFields(rebalance)->AddLengthDelimited(999, padding);
  moex::v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  ASSERT_GT(request.ByteSizeLong(), 200000u);
  moex::v1::Job job;
  grpc::Status status = stub_->SubmitJob(Context().get(), request, &job);
  ASSERT_TRUE(status.ok()) << status.error_message();
  auto unknown_fields = [](const moex::v1::Job& j) {
    return j.spec().GetReflection()->GetUnknownFields(j.spec()).field_count() +
           j.spec().rebalance().GetReflection()->GetUnknownFields(j.spec().rebalance()).field_count();
  };
  EXPECT_EQ(unknown_fields(job), 0);
  EXPECT_LT(job.ByteSizeLong(), 10000u);
  // And the record on disk: a restarted controller answers it from there.
  controller_.reset();
  Start();
  moex::v1::GetJobRequest get;
  get.set_id(job.id());
  moex::v1::Job stored;
  ASSERT_TRUE(stub_->GetJob(Context().get(), get, &stored).ok());
  EXPECT_EQ(unknown_fields(stored), 0);
  EXPECT_LT(stored.ByteSizeLong(), 10000u);
}

// --keep-jobs 3: the oldest ended jobs go, with their logs; a running job,
// older than all of them, stays. Then --keep-days 2 drops those ended over
// two days ago. DeleteJob refuses the running job and removes an ended one.
TEST_F(JobListTest, RetentionAndDeleteRemoveEndedJobsAndTheirLogsNeverARunningOne) {
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count();
  moex::v1::Job running;
  running.set_id("j-000000000001");
  running.set_state(moex::v1::JOB_STATE_RUNNING);
  running.mutable_spec()->set_world_size(1);
  running.mutable_spec()->set_steps(1000);
  running.set_ranks_registered(1);
  running.set_submit_time_unix_ms(now - 20 * kDayMs);
  Record({running}, FakeLauncher(running.id()));
  Record({Ended("j-ended10d", now - 11 * kDayMs, now - 10 * kDayMs), Ended("j-ended8d", now - 9 * kDayMs, now - 8 * kDayMs),
          Ended("j-ended6d", now - 7 * kDayMs, now - 6 * kDayMs), Ended("j-ended1d", now - 2 * kDayMs, now - kDayMs),
          Ended("j-ended12h", now - kDayMs, now - kDayMs / 2)});
  Start(/*keep_jobs=*/3);
  // A job leaves memory first and its files after (job_retention.cc): wait
  // for the last of them.
  auto gone = [&](const char* id) { return !Exists(id) && !fs::exists(state() / "logs" / (std::string(id) + ".log")); };
  for (int i = 0; i < 100 && !(gone("j-ended10d") && gone("j-ended8d")); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(Exists("j-ended10d"));
  EXPECT_FALSE(Exists("j-ended8d"));
  EXPECT_FALSE(fs::exists(state() / "logs" / "j-ended10d.log"));
  EXPECT_FALSE(fs::exists(state() / "logs" / "j-ended8d.log"));
  for (const char* kept : {"j-ended6d", "j-ended1d", "j-ended12h", "j-000000000001"}) {
    EXPECT_TRUE(Exists(kept)) << kept;
    EXPECT_TRUE(fs::exists(state() / "logs" / (std::string(kept) + ".log"))) << kept;
  }
  absl::StatusOr<moex::v1::Job> adopted = controller_->jobs().Get(running.id());
  ASSERT_TRUE(adopted.ok());
  EXPECT_EQ(adopted->state(), moex::v1::JOB_STATE_RUNNING) << adopted->message();

  moex::v1::DeleteJobRequest request;
  moex::v1::Job answer;
  request.set_id(running.id());
  grpc::Status refused = stub_->DeleteJob(Context().get(), request, &answer);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr("job j-000000000001 is RUNNING: only an ended job can be deleted; "
                                                 "cancel it first"));
  request.set_id("j-nothing");
  EXPECT_EQ(stub_->DeleteJob(Context().get(), request, &answer).error_code(), grpc::StatusCode::NOT_FOUND);
  request.set_id("j-ended1d");
  grpc::Status deleted = stub_->DeleteJob(Context().get(), request, &answer);
  ASSERT_TRUE(deleted.ok()) << deleted.error_message();
  EXPECT_EQ(answer.id(), "j-ended1d");
  EXPECT_FALSE(Exists("j-ended1d"));
  EXPECT_FALSE(fs::exists(state() / "logs" / "j-ended1d.log"));

  controller_.reset();  // stops the adopted job: it ends now, the newest
  kill(-group_, SIGKILL);
  waitpid(group_, nullptr, 0);
  group_ = 0;
  Start(/*keep_jobs=*/0, /*keep_days=*/2);
  for (int i = 0; i < 100 && !gone("j-ended6d"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(Exists("j-ended6d"));
  EXPECT_FALSE(fs::exists(state() / "logs" / "j-ended6d.log"));
  EXPECT_TRUE(Exists("j-ended12h"));
  EXPECT_TRUE(Exists("j-000000000001"));
}

}  // namespace
}  // namespace moex::cluster
