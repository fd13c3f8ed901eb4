// Load on the controller: 50 submissions and 200 concurrent status calls,
// nothing lost, latency percentiles.
//
//   moex_bench_control [--submissions 50] [--status-calls 200] [--json FILE]
//
// The controller runs in this process on a loopback port with a fresh state
// dir; every submitted job (1 rank, 1 step of the `tiny` preset) must end
// SUCCEEDED and appear in ListJobs, every status call must answer OK.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/cluster/server.h"
#include "moex/v1/job.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t index = static_cast<size_t>(p / 100.0 * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

nlohmann::json Summary(const std::vector<double>& ms) {
  return {{"count", ms.size()}, {"p50_ms", Percentile(ms, 50)}, {"p90_ms", Percentile(ms, 90)},
          {"p99_ms", Percentile(ms, 99)}, {"max_ms", Percentile(ms, 100)}};
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  int submissions = 50, status_calls = 200;
  std::string json;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--submissions") submissions = std::atoi(argv[i + 1]);
    else if (flag == "--status-calls") status_calls = std::atoi(argv[i + 1]);
    else if (flag == "--json") json = argv[i + 1];
  }
  std::string dir = std::filesystem::temp_directory_path() / ("moex_load_" + std::to_string(getpid()));
  moex::cluster::ControllerOptions options;
  options.state_dir = dir;
  options.listen = "127.0.0.1:0";
  options.max_concurrent_jobs = submissions + 1;
  options.start_timeout_seconds = 600;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
  options.moex_binary = (self.parent_path() / "moex").string();
  auto controller = moex::cluster::Controller::Start(options);
  if (!controller.ok()) {
    std::fprintf(stderr, "%s\n", std::string(controller.status().message()).c_str());
    return 1;
  }
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string((*controller)->port()), grpc::InsecureChannelCredentials());
  auto stub = moex::v1::JobService::NewStub(channel);
  auto context = [] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return c;
  };

  std::mutex mutex;
  std::vector<double> submit_ms, status_ms;
  std::vector<std::string> ids;
  std::atomic<int> failures{0};
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < submissions; ++i) {
    threads.emplace_back([&, i] {
      moex::v1::SubmitJobRequest request;
      auto* spec = request.mutable_spec();
      spec->set_name("load-" + std::to_string(i));
      spec->set_world_size(1);
      spec->set_model("tiny");
      spec->set_steps(1);
      spec->set_tokens_per_rank(8);
      moex::v1::Job job;
      auto t0 = Clock::now();
      grpc::Status status = stub->SubmitJob(context().get(), request, &job);
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      std::lock_guard<std::mutex> lock(mutex);
      if (!status.ok()) { ++failures; std::fprintf(stderr, "submit: %s\n", status.error_message().c_str()); return; }
      submit_ms.push_back(ms);
      ids.push_back(job.id());
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  for (int i = 0; i < status_calls; ++i) {
    threads.emplace_back([&, i] {
      moex::v1::GetJobRequest request;
      {
        std::lock_guard<std::mutex> lock(mutex);
        request.set_id(ids[static_cast<size_t>(i) % ids.size()]);
      }
      moex::v1::Job job;
      auto t0 = Clock::now();
      grpc::Status status = stub->GetJob(context().get(), request, &job);
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      std::lock_guard<std::mutex> lock(mutex);
      if (!status.ok()) { ++failures; return; }
      status_ms.push_back(ms);
    });
  }
  for (auto& t : threads) t.join();

  // Every job ends SUCCEEDED and is listed: nothing lost.
  int succeeded = 0, listed = 0;
  auto until = Clock::now() + std::chrono::seconds(600);
  while (Clock::now() < until) {
    succeeded = 0;
    for (const std::string& id : ids) {
      auto job = (*controller)->jobs().Get(id);
      succeeded += job.ok() && job->state() == moex::v1::JOB_STATE_SUCCEEDED;
    }
    bool all_ended = true;
    for (const std::string& id : ids) {
      auto job = (*controller)->jobs().Get(id);
      all_ended &= job.ok() && moex::cluster::IsTerminal(job->state());
    }
    if (all_ended) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  double total_s = std::chrono::duration<double>(Clock::now() - start).count();
  moex::v1::ListJobsResponse list;
  if (stub->ListJobs(context().get(), moex::v1::ListJobsRequest(), &list).ok()) listed = list.jobs_size();
  nlohmann::json result = {{"submissions", submissions}, {"status_calls", status_calls},
                           {"call_failures", failures.load()}, {"jobs_succeeded", succeeded},
                           {"jobs_listed", listed}, {"seconds_until_all_ended", total_s},
                           {"submit_latency", Summary(submit_ms)}, {"status_latency", Summary(status_ms)}};
  result["provenance"] = moex::ProvenanceJson();
  std::printf("%s\n", result.dump(2).c_str());
  if (!json.empty()) std::ofstream(json) << result.dump(2) << "\n";
  (*controller)->Shutdown();
  std::filesystem::remove_all(dir);
  bool ok = failures == 0 && succeeded == submissions && listed == submissions;
  std::printf("%s\n", ok ? "nothing lost: every call answered, every job SUCCEEDED and listed" : "LOST WORK: see above");
  return ok ? 0 : 1;
}
