// RunLayer with its ranks as threads (the in-process transport): what its
// sinks hear, and how the ranks stop together when the controller cancels.
#include "moex/run/runner.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::run {
namespace {

using ::testing::HasSubstr;

// What one rank's sink heard, in order.
class RecordingSink final : public RunSink {
 public:
  void OnStart(const RunHeader& header) override {
    events.push_back("start");
    world = header.world_size;
    tokens_per_step = header.tokens_per_step;
  }
  void OnStep(const StepSummary& summary, const RunProgress& progress) override {
    events.push_back("step " + std::to_string(summary.step));
    steps_done = progress.steps_done;
  }
  void OnCheck(double error, double bound) override {
    events.push_back("check");
    check_error = error;
    check_bound = bound;
  }
  absl::Status OnFinish(const RunResult& result) override {
    events.push_back("finish");
    final = result.progress.final;
    data_path = result.data_path;
    return absl::OkStatus();
  }
  std::vector<std::string> events;
  int world = 0;
  int64_t tokens_per_step = 0, steps_done = 0;
  double check_error = -1, check_bound = 0;
  bool final = false;
  std::string data_path;
};

// A controller that publishes nothing and cancels the job once rank
// `cancel_rank` has seen `cancel_after` steps start (other ranks never see
// the flag: the ranks must agree on it).
class FakeController final : public ControllerLink {
 public:
  FakeController(int rank, int cancel_rank, int cancel_after, int world)
      : rank_(rank), cancel_rank_(cancel_rank), cancel_after_(cancel_after), world_(world) {}
  absl::StatusOr<placement::Placement> StartPlacement() override {
    return placement::Placement::Contiguous(8, world_, 0);  // the `tiny` preset's 8 experts
  }
  std::optional<placement::Placement> PublishedAfter(int64_t) override { return std::nullopt; }
  bool cancelled() const override { return rank_ == cancel_rank_ && ++asked_ > cancel_after_; }

 private:
  int rank_, cancel_rank_, cancel_after_, world_;
  mutable int asked_ = 0;
};

std::vector<absl::Status> RunRanks(const job::RunConfig& config, int world, std::vector<RecordingSink>* sinks,
                                   int cancel_rank = -1, int cancel_after = 0) {
  transport::InProcessHub hub(world);
  std::vector<absl::Status> statuses(world);
  sinks->assign(world, RecordingSink());
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      std::unique_ptr<transport::Transport> t = hub.Connect(r);
      std::vector<RunSink*> mine = {&(*sinks)[r]};
      FakeController controller(r, cancel_rank, cancel_after, world);
      statuses[r] = RunLayer(config, *t, mine, cancel_rank >= 0 ? &controller : nullptr);
    });
  }
  for (std::thread& thread : threads) thread.join();
  return statuses;
}

job::RunConfig Tiny() {
  job::RunConfig config;
  config.model = "tiny";
  config.steps = 3;
  config.tokens_per_rank = 9;
  config.timeout_seconds = 20;
  config.check = true;
  return config;
}

TEST(RunnerTest, SinksHearEveryStepThenTheCheckThenTheEnd) {
  std::vector<RecordingSink> sinks;
  std::vector<absl::Status> statuses = RunRanks(Tiny(), 3, &sinks);
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
    EXPECT_EQ(sinks[r].world, 3);
    EXPECT_EQ(sinks[r].tokens_per_step, 27);
    EXPECT_EQ(sinks[r].steps_done, 3);
    EXPECT_TRUE(sinks[r].final);
    EXPECT_FALSE(sinks[r].data_path.empty());
  }
  // Rank 0 runs the check; every rank hears the steps in order.
  EXPECT_EQ(sinks[0].events, (std::vector<std::string>{"start", "step 0", "step 1", "step 2", "check", "finish"}));
  EXPECT_EQ(sinks[1].events, (std::vector<std::string>{"start", "step 0", "step 1", "step 2", "finish"}));
  EXPECT_LE(sinks[0].check_error, sinks[0].check_bound);
}

TEST(RunnerTest, ACancelSeenByOneRankStopsEveryRankAtTheSameStep) {
  std::vector<RecordingSink> sinks;
  job::RunConfig config = Tiny();
  config.steps = 6;
  std::vector<absl::Status> statuses = RunRanks(config, 3, &sinks, /*cancel_rank=*/2, /*cancel_after=*/2);
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(absl::IsCancelled(statuses[r])) << "rank " << r << ": " << statuses[r];
    EXPECT_THAT(std::string(statuses[r].message()), HasSubstr("stopped before step 3"));
    EXPECT_EQ(sinks[r].steps_done, 2) << "rank " << r;
  }
}

TEST(RunnerTest, ABadConfigFailsBeforeAnyExchange) {
  std::vector<RecordingSink> sinks;
  job::RunConfig config = Tiny();
  config.steps = 0;
  std::vector<absl::Status> statuses = RunRanks(config, 2, &sinks);
  for (const absl::Status& status : statuses) EXPECT_THAT(std::string(status.message()), HasSubstr("--steps is 0"));
  EXPECT_TRUE(sinks[0].events.empty());
}

}  // namespace
}  // namespace moex::run
