// A controller among careless operators (issue #19): a second controller on
// the same state dir or the same port is refused, a state dir deleted under
// a running controller turns it NOT_SERVING and stops submissions, and a
// recycled process group id is never signalled.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/cluster/job_store.h"
#include "moex/cluster/server.h"
#include "moex/core/subprocess.h"
#include "moex/v1/job.grpc.pb.h"

namespace moex::cluster {
namespace {

using ::testing::HasSubstr;

class ServeGuardsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("moex_guard_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override {
    controller_.reset();
    std::filesystem::remove_all(dir_);
  }

  ControllerOptions Options(const std::string& state = "state") {
    ControllerOptions options;
    options.state_dir = (dir_ / state).string();
    options.listen = "127.0.0.1:0";
    const char* worker = std::getenv("MOEX_TEST_WORKER_BINARY");
    options.moex_binary = worker != nullptr ? worker : MOEX_BINARY;
    return options;
  }

  void Start() {
    auto controller = Controller::Start(Options());
    ASSERT_TRUE(controller.ok()) << controller.status();
    controller_ = std::move(*controller);
    channel_ = grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials());
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(controller_->port()); }

  // grpc.health.v1.Health/Check for the whole server, spoken raw (Debian
  // ships no health client): an empty request; the answer's field 1 is 1
  // (SERVING) or 2 (NOT_SERVING). -1 when the call fails.
  int Health() {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::CompletionQueue queue;
    grpc::ByteBuffer request, response;
    grpc::Slice empty("", 0);
    request = grpc::ByteBuffer(&empty, 1);
    auto call = generic.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &queue);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    const bool got = queue.Next(&tag, &ok);
    queue.Shutdown();
    while (queue.Next(&tag, &ok)) {
    }
    if (!got || !status.ok()) return -1;
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return -1;
    std::string bytes;
    for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
  }

  grpc::Status Submit(moex::v1::Job* job) {
    moex::v1::SubmitJobRequest request;
    request.mutable_spec()->set_name("guard");
    request.mutable_spec()->set_world_size(1);
    request.mutable_spec()->set_model("tiny");
    request.mutable_spec()->set_steps(1);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return moex::v1::JobService::NewStub(channel_)->SubmitJob(&context, request, job);
  }

  std::filesystem::path dir_;
  std::unique_ptr<Controller> controller_;
  std::shared_ptr<grpc::Channel> channel_;
};

// Before: the second controller started, adopted the first one's running
// jobs and killed them at its heartbeat timeout.
TEST_F(ServeGuardsTest, ASecondControllerOnTheStateDirIsRefusedNamingIt) {
  Start();
  auto second = Controller::Start(Options());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr(Options().state_dir));
  EXPECT_THAT(second.status().message(), HasSubstr("pid " + std::to_string(getpid())));
  EXPECT_EQ(Health(), 1);  // the first one is untouched
  // Once the first has gone, the state dir is free again.
  controller_.reset();
  EXPECT_TRUE(Controller::Start(Options()).ok());
}

// Before: gRPC set SO_REUSEPORT, both listened, and clients were split
// between the two controllers' databases.
TEST_F(ServeGuardsTest, APortInUseIsRefused) {
  Start();
  ControllerOptions options = Options("other");
  options.listen = Address();
  auto second = Controller::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().message(), "cannot listen on " + Address() + ": in use");
  // Refused before touching its state dir's jobs: nothing was opened there.
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::path(options.state_dir) / "jobs.db"));
  EXPECT_EQ(Health(), 1);
}

// Before: the controller wrote into the deleted database (every record gone
// at the next start) and new jobs failed with "cannot start 'mpirun': No such
// file or directory" (the missing file was the job's log).
TEST_F(ServeGuardsTest, ADeletedStateDirTurnsHealthNotServingAndRefusesSubmissions) {
  Start();
  EXPECT_EQ(Health(), 1);
  std::filesystem::remove_all(Options().state_dir);
  moex::v1::Job job;
  grpc::Status refused = Submit(&job);
  EXPECT_THAT(refused.error_code(), ::testing::AnyOf(grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::UNAVAILABLE))
      << refused.error_message() << "; job " << job.ShortDebugString();
  EXPECT_THAT(refused.error_message(), HasSubstr(Options().state_dir));
  int health = 1;
  for (int i = 0; i < 50 && health == 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    health = Health();
  }
  EXPECT_EQ(health, 2);  // NOT_SERVING within 5 s
}

TEST_F(ServeGuardsTest, ALogsDirDeletedIsNamed) {
  Start();
  std::filesystem::remove_all(std::filesystem::path(Options().state_dir) / "logs");
  moex::v1::Job job;
  grpc::Status refused = Submit(&job);
  EXPECT_FALSE(refused.ok()) << job.ShortDebugString();
  EXPECT_THAT(refused.error_message(), HasSubstr(Options().state_dir + "/logs"));
}

// The launch itself names a log it cannot open, not the program it starts.
// Item 3: after a restart, a job's recorded process group id that now
// belongs to another program (a recycled id: here a `setsid sleep`, as
// `ns_last_pid` can arrange) is left alone: the job is not adopted, nothing
// is signalled, and the record says why.
TEST_F(ServeGuardsTest, ARecycledProcessGroupIsNeverSignalled) {
  const pid_t other = fork();
  ASSERT_GE(other, 0);
  if (other == 0) {
    setsid();
    execl("/bin/sleep", "sleep", "300", static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 200 && getpgid(other) != other; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(getpgid(other), other);
  {
    std::filesystem::create_directories(Options().state_dir);
    auto store = JobStore::Open(Options().state_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    moex::v1::Job job;
    job.set_id("j-00000000000a");
    job.set_state(moex::v1::JOB_STATE_RUNNING);
    job.mutable_spec()->set_world_size(2);
    job.mutable_spec()->set_steps(10);
    job.set_ranks_registered(2);
    ASSERT_TRUE((*store)->Put(job, other).ok());
  }
  Start();
  absl::StatusOr<moex::v1::Job> job = controller_->jobs().Get("j-00000000000a");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), moex::v1::JOB_STATE_FAILED);
  EXPECT_THAT(job->message(), HasSubstr("its process group id " + std::to_string(other) +
                                        " now belongs to another program, left alone"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  controller_.reset();  // shutting down signals nothing of it either
  int status = 0;
  EXPECT_EQ(waitpid(other, &status, WNOHANG), 0) << "the recycled group was signalled";
  kill(other, SIGKILL);
  waitpid(other, &status, 0);
}

// Issue #19 item b. Before: `moex serve --listen 0.0.0.0:PORT` with neither
// a token nor TLS started, and ran jobs for anyone who could reach it.
TEST_F(ServeGuardsTest, AnAddressOtherHostsReachNeedsATokenOrMutualTlsOrInsecure) {
  for (const std::string listen : {"0.0.0.0:0", ":0"}) {
    ControllerOptions options = Options();
    options.listen = listen;
    auto refused = Controller::Start(options);
    ASSERT_FALSE(refused.ok()) << listen;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << listen;
    EXPECT_THAT(refused.status().message(), HasSubstr("--listen " + listen + " is reachable from other hosts"));
    EXPECT_THAT(refused.status().message(), HasSubstr("--token-file"));
    EXPECT_THAT(refused.status().message(), HasSubstr("--tls-client-ca"));
    EXPECT_THAT(refused.status().message(), HasSubstr("--insecure"));
    // Refused before anything was made.
    EXPECT_FALSE(std::filesystem::exists(options.state_dir)) << listen;
  }
  ControllerOptions options = Options();
  options.listen = "0.0.0.0:0";
  options.insecure = true;
  auto insecure = Controller::Start(options);
  ASSERT_TRUE(insecure.ok()) << insecure.status();
  insecure->reset();
  options.insecure = false;
  options.token = "s3cret";
  auto with_token = Controller::Start(options);
  ASSERT_TRUE(with_token.ok()) << with_token.status();
  with_token->reset();
  // Loopback needs nothing (the default, 127.0.0.1, in every other test).
  options.token.clear();
  options.listen = "localhost:0";
  auto loopback = Controller::Start(options);
  EXPECT_TRUE(loopback.ok()) << loopback.status();
}

// Issue #19 item c. Before: the state dir and its logs dir were made 0755
// and serve.lock and the jobs' logs 0644, for any user of the host to read.
TEST_F(ServeGuardsTest, WhatItMakesInTheStateDirIsItsOwnersAlone) {
  const mode_t old_umask = umask(022);
  ControllerOptions options = Options("made/state");  // its parent is missing too
  auto controller = Controller::Start(options);
  umask(old_umask);
  ASSERT_TRUE(controller.ok()) << controller.status();
  controller_ = std::move(*controller);
  channel_ = grpc::CreateChannel(Address(), grpc::InsecureChannelCredentials());
  auto mode = [](const std::filesystem::path& path) {
    struct stat info {};
    EXPECT_EQ(stat(path.c_str(), &info), 0) << path;
    return info.st_mode & 07777;
  };
  const std::filesystem::path state = options.state_dir;
  EXPECT_EQ(mode(state), 0700u);
  EXPECT_EQ(mode(state / "logs"), 0700u);
  EXPECT_EQ(mode(state / "serve.lock"), 0600u);
  moex::v1::Job job;
  ASSERT_TRUE(Submit(&job).ok());
  EXPECT_EQ(mode(job.log_path()), 0600u) << job.log_path();
}

// Item 3's gap: an adopted job whose process group id passes to another
// program (here its leader execs `sleep`, which is how a recycled id looks
// from outside) between the monitor's checks. Before: cancel sent it
// SIGTERM, and shutting down SIGKILL, without asking again whose it was.
TEST_F(ServeGuardsTest, AGroupThatIsAnotherProgramsNowIsNotSignalledOnCancelNorAtShutdown) {
  struct Fake {
    std::string id;
    pid_t pid = 0;
    int go = -1;  // writing a line here makes it exec `sleep 300`
  };
  std::vector<Fake> fakes = {{"j-0000000000c1"}, {"j-0000000000c2"}};
  const std::string marker_prefix = "worker --job-id ";
  for (Fake& fake : fakes) {
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    fake.pid = fork();
    ASSERT_GE(fake.pid, 0);
    if (fake.pid == 0) {
      setsid();
      dup2(pipe_fds[0], STDIN_FILENO);
      close(pipe_fds[1]);
      // Its command line carries the job's marker, as mpirun's does.
      execl("/bin/sh", "sh", "-c", "read line; exec sleep 300", "worker", "--job-id", fake.id.c_str(), "--attempt", "1",
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(pipe_fds[0]);
    fake.go = pipe_fds[1];
    for (int i = 0; i < 400 && !CommandLineHas(fake.pid, marker_prefix + fake.id + " "); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(CommandLineHas(fake.pid, marker_prefix + fake.id + " "));
  }
  {
    std::filesystem::create_directories(Options().state_dir);
    auto store = JobStore::Open(Options().state_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    for (const Fake& fake : fakes) {
      moex::v1::Job job;
      job.set_id(fake.id);
      job.set_state(moex::v1::JOB_STATE_RUNNING);
      job.mutable_spec()->set_world_size(2);
      job.mutable_spec()->set_steps(10);
      job.set_ranks_registered(2);
      ASSERT_TRUE((*store)->Put(job, fake.pid).ok());
    }
  }
  Start();
  for (const Fake& fake : fakes) {
    ASSERT_EQ(controller_->jobs().Get(fake.id)->state(), moex::v1::JOB_STATE_RUNNING) << fake.id << " was not adopted";
  }
  // Becomes another program; acted on at once, before the monitor's next
  // look (every 50 ms) can notice.
  auto turn = [&](const Fake& fake) {
    ASSERT_EQ(write(fake.go, "go\n", 3), 3);
    while (CommandLineHas(fake.pid, marker_prefix + fake.id + " ")) {
    }
  };
  turn(fakes[0]);
  ASSERT_TRUE(controller_->jobs().Cancel(fakes[0].id).ok());
  turn(fakes[1]);
  controller_.reset();  // shutting down ends the running job: FAILED, its processes stopped
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (const Fake& fake : fakes) {
    int status = 0;
    EXPECT_EQ(waitpid(fake.pid, &status, WNOHANG), 0)
        << fake.id << ": the program that has its group id now was signalled ("
        << (WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited") << ")";
    kill(fake.pid, SIGKILL);
    waitpid(fake.pid, &status, 0);
    close(fake.go);
  }
}

TEST(SpawnTest, ALogThatCannotBeOpenedIsNamed) {
  SpawnOptions options;
  options.argv = {"true"};
  options.log_path = "/nonexistent-moex-dir/j-1.log";
  auto pid = SpawnInNewGroup(options);
  ASSERT_FALSE(pid.ok());
  EXPECT_THAT(pid.status().message(), HasSubstr("/nonexistent-moex-dir/j-1.log"));
  EXPECT_THAT(pid.status().message(), ::testing::Not(HasSubstr("cannot start 'true'")));
}

}  // namespace
}  // namespace moex::cluster
