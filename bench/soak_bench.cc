// Soak: a real controller (`moex serve`, its own process) under continuous
// submissions, status and list calls and watch streams for minutes while its
// jobs run; its resident memory and open file descriptors sampled all along;
// at the end every job submitted must be listed and SUCCEEDED, before and
// after a restart of the controller.
//
//   moex_bench_soak --moex PATH/moex [--minutes 3] [--status-threads 2]
//       [--watchers 2] [--world-size 2] [--steps 20] [--out DIR]
//
// Writes DIR/soak.json (figures and samples), DIR/soak.csv (samples) and
// DIR/soak-memory.svg, DIR/soak-fds.svg. Exits non-zero when a job is lost
// or did not succeed, or a call failed other than at the controller's
// active-job limit.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/bench/svg_chart.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"
#include "moex/v1/job.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Every job the controller lists, page by page (100 a page): each call's
// answer stays small however many jobs it has run. `calls` counts the pages.
grpc::Status ListAll(moex::v1::JobService::Stub& stub, const std::function<std::unique_ptr<grpc::ClientContext>()>& context,
                     std::vector<moex::v1::Job>* jobs, int64_t* calls) {
  jobs->clear();
  moex::v1::ListJobsRequest request;
  request.set_page_size(100);
  do {
    moex::v1::ListJobsResponse page;
    grpc::Status status = stub.ListJobs(context().get(), request, &page);
    if (calls != nullptr) ++*calls;
    if (!status.ok()) return status;
    for (auto& job : *page.mutable_jobs()) jobs->push_back(std::move(job));
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  return grpc::Status::OK;
}

struct Options {
  std::string moex = "moex", out = "soak-results";
  double minutes = 3;
  int status_threads = 2, watchers = 2, world_size = 2, steps = 20;
};

struct Sample {
  double seconds = 0, rss_mib = 0;
  int fds = 0;
  int64_t submitted = 0, ended = 0, status_calls = 0, watch_streams = 0;
};

double RssMib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return 0;
}

int OpenFds(pid_t pid) {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

// Starts `moex serve` on a free loopback port; returns its pid and address.
std::pair<pid_t, std::string> StartController(const Options& o, const std::string& state, const std::string& log) {
  moex::SpawnOptions spawn;
  spawn.argv = {o.moex, "serve", "--listen", "127.0.0.1:0", "--state-dir", state, "--max-jobs", "4"};
  spawn.log_path = log;
  if (geteuid() == 0) spawn.extra_env = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
  absl::StatusOr<pid_t> pid = moex::SpawnInNewGroup(spawn);
  if (!pid.ok()) {
    std::fprintf(stderr, "moex_bench_soak: cannot start %s: %s\n", o.moex.c_str(), std::string(pid.status().message()).c_str());
    std::exit(1);
  }
  static const std::regex kListening(R"(listening on (127\.0\.0\.1:\d+))");
  for (int i = 0; i < 300; ++i) {
    std::ifstream in(log);
    std::stringstream text;
    text << in.rdbuf();
    std::string all = text.str();
    std::smatch match;
    // The last "listening" line: the log is appended across restarts.
    std::string address;
    for (auto it = std::sregex_iterator(all.begin(), all.end(), kListening); it != std::sregex_iterator(); ++it) {
      address = (*it)[1].str();
    }
    const size_t listening = all.rfind("listening"), stopping = all.rfind("stopping");
    if (!address.empty() && (stopping == std::string::npos || listening > stopping)) return {*pid, address};
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::fprintf(stderr, "moex_bench_soak: the controller did not start; see %s\n", log.c_str());
  std::exit(1);
}

std::unique_ptr<grpc::ClientContext> Context(double seconds) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  return c;
}

void Plot(const std::vector<Sample>& samples, const std::string& path, const std::string& title,
          const std::string& y_label, double Sample::*field_d, int Sample::*field_i) {
  moex::bench::Chart chart;
  chart.title = title;
  chart.x_label = "seconds";
  chart.y_label = y_label;
  moex::bench::Series s;
  s.label = "moex serve";
  for (const Sample& x : samples) s.points.push_back({x.seconds, field_d ? x.*field_d : static_cast<double>(x.*field_i)});
  chart.series.push_back(s);
  std::ofstream(path) << moex::bench::RenderSvg(chart);
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--moex") o.moex = value;
    else if (flag == "--minutes") o.minutes = std::atof(value.c_str());
    else if (flag == "--status-threads") o.status_threads = std::atoi(value.c_str());
    else if (flag == "--watchers") o.watchers = std::atoi(value.c_str());
    else if (flag == "--world-size") o.world_size = std::atoi(value.c_str());
    else if (flag == "--steps") o.steps = std::atoi(value.c_str());
    else if (flag == "--out") o.out = value;
    else {
      std::fprintf(stderr, "moex_bench_soak: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  std::filesystem::create_directories(o.out);
  const std::string state = (std::filesystem::path(o.out) / "state").string();
  const std::string log = (std::filesystem::path(o.out) / "serve.log").string();
  std::filesystem::remove_all(state);
  std::filesystem::remove(log);
  auto [serve, address] = StartController(o, state, log);
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = moex::v1::JobService::NewStub(channel);

  const auto start = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  const double duration = o.minutes * 60;
  std::atomic<bool> stop{false};
  std::mutex mutex;
  std::vector<std::string> ids;
  std::atomic<int64_t> submitted{0}, refused_at_limit{0}, status_calls{0}, watch_streams{0}, failures{0};
  std::vector<std::string> failure_examples;
  auto fail = [&](const std::string& what) {
    ++failures;
    std::lock_guard<std::mutex> lock(mutex);
    if (failure_examples.size() < 10) failure_examples.push_back(what);
  };
  auto random_id = [&](std::mt19937_64& rng) -> std::string {
    std::lock_guard<std::mutex> lock(mutex);
    if (ids.empty()) return "";
    // Mostly recent jobs (those still running), sometimes any.
    size_t n = ids.size();
    size_t pick = rng() % 4 == 0 ? rng() % n : n - 1 - rng() % std::min<size_t>(n, 8);
    return ids[pick];
  };

  std::vector<std::thread> threads;
  threads.emplace_back([&] {  // submissions, as fast as the active-job limit lets them in
    int64_t n = 0;
    while (!stop) {
      moex::v1::SubmitJobRequest request;
      auto* spec = request.mutable_spec();
      spec->set_name("soak-" + std::to_string(n));
      spec->set_world_size(o.world_size);
      spec->set_model("tiny");
      spec->set_steps(o.steps);
      spec->set_tokens_per_rank(16);
      moex::v1::Job job;
      grpc::Status status = stub->SubmitJob(Context(30).get(), request, &job);
      if (status.ok()) {
        ++n;
        ++submitted;
        std::lock_guard<std::mutex> lock(mutex);
        ids.push_back(job.id());
      } else if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++refused_at_limit;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      } else {
        fail("SubmitJob: " + status.error_message());
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  });
  for (int t = 0; t < o.status_threads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t + 1);
      while (!stop) {
        grpc::Status status;
        if (rng() % 5 == 0) {
          std::vector<moex::v1::Job> listed;
          int64_t pages = 0;
          status = ListAll(*stub, [] { return Context(10); }, &listed, &pages);
          status_calls += pages - 1;
        } else {
          std::string id = random_id(rng);
          if (id.empty()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            continue;
          }
          moex::v1::GetJobRequest request;
          request.set_id(id);
          moex::v1::Job job;
          status = stub->GetJob(Context(10).get(), request, &job);
        }
        ++status_calls;
        if (!status.ok()) fail("GetJob/ListJobs: " + status.error_message());
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  for (int t = 0; t < o.watchers; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      while (!stop) {
        std::string id = random_id(rng);
        if (id.empty()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          continue;
        }
        moex::v1::WatchJobRequest request;
        request.set_id(id);
        auto context = Context(120);
        auto reader = stub->WatchJob(context.get(), request);
        moex::v1::Job job;
        while (reader->Read(&job)) {
        }
        grpc::Status status = reader->Finish();
        ++watch_streams;
        if (!status.ok() && status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
          fail("WatchJob: " + status.error_message());
        }
      }
    });
  }

  std::vector<Sample> samples;
  int64_t last_report = -1;
  std::string died;  // how the controller ended, when it did mid-soak
  while (elapsed() < duration) {
    int serve_status = 0;
    if (waitpid(serve, &serve_status, WNOHANG) == serve) {
      died = moex::StrCat("the controller (pid ", serve, ") died at ", static_cast<int64_t>(elapsed()), " s: ",
                          moex::DescribeWaitStatus(serve_status), "; see ", log);
      std::fprintf(stderr, "moex_bench_soak: %s\n", died.c_str());
      break;
    }
    Sample s;
    s.seconds = elapsed();
    s.rss_mib = RssMib(serve);
    s.fds = OpenFds(serve);
    s.submitted = submitted;
    s.status_calls = status_calls;
    s.watch_streams = watch_streams;
    samples.push_back(s);
    if (static_cast<int64_t>(s.seconds / 15) != last_report) {
      last_report = static_cast<int64_t>(s.seconds / 15);
      std::fprintf(stderr, "moex_bench_soak: %4.0f/%.0f s: %ld jobs submitted, %ld status calls, %ld watch streams, "
                   "rss %.1f MiB, %d fds\n", s.seconds, duration, static_cast<long>(s.submitted),
                   static_cast<long>(s.status_calls), static_cast<long>(s.watch_streams), s.rss_mib, s.fds);
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  stop = true;
  for (std::thread& t : threads) t.join();

  // Every job ends, and every job is there: before and after a restart.
  auto check_all = [&](const char* when) {
    std::map<std::string, moex::v1::JobState> seen;
    for (int i = 0; i < 1200; ++i) {
      std::vector<moex::v1::Job> listed;
      grpc::Status status = ListAll(*stub, [] { return Context(10); }, &listed, nullptr);
      seen.clear();
      bool all_ended = status.ok();
      for (const auto& job : listed) {
        seen[job.id()] = job.state();
        all_ended &= job.state() >= moex::v1::JOB_STATE_SUCCEEDED;
      }
      if (all_ended) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    int64_t lost = 0, not_succeeded = 0;
    for (const std::string& id : ids) {
      auto it = seen.find(id);
      if (it == seen.end()) ++lost;
      else if (it->second != moex::v1::JOB_STATE_SUCCEEDED) ++not_succeeded;
    }
    std::fprintf(stderr, "moex_bench_soak: %s: %zu jobs submitted, %zu listed, %ld lost, %ld not SUCCEEDED\n", when,
                 ids.size(), seen.size(), static_cast<long>(lost), static_cast<long>(not_succeeded));
    return std::make_pair(lost, not_succeeded);
  };
  int64_t lost = 0, not_succeeded = 0;
  double final_rss = 0;
  int final_fds = 0;
  int wait_status = 0;
  if (died.empty()) {
    std::tie(lost, not_succeeded) = check_all("after the soak");
    final_rss = RssMib(serve);
    final_fds = OpenFds(serve);
    kill(serve, SIGTERM);
    waitpid(serve, &wait_status, 0);
  }
  // After a crash too: a restarted controller must still hold every job.
  auto [serve2, address2] = StartController(o, state, log);
  channel = grpc::CreateChannel(address2, grpc::InsecureChannelCredentials());
  stub = moex::v1::JobService::NewStub(channel);
  auto [lost_after, not_succeeded_after] = check_all("after a restart");
  kill(serve2, SIGTERM);
  waitpid(serve2, &wait_status, 0);

  // Flat: growth from the first sample after a fifth of the run (warm-up:
  // gRPC threads, SQLite cache) to the last.
  if (samples.empty()) samples.push_back(Sample{});
  const Sample& warm = samples[samples.size() / 5];
  const Sample& last = samples.back();
  nlohmann::json series = nlohmann::json::array();
  std::ofstream csv(std::filesystem::path(o.out) / "soak.csv");
  csv << "seconds,rss_mib,fds,submitted,status_calls,watch_streams\n";
  for (const Sample& s : samples) {
    series.push_back({{"seconds", s.seconds}, {"rss_mib", s.rss_mib}, {"fds", s.fds}, {"submitted", s.submitted}});
    csv << s.seconds << "," << s.rss_mib << "," << s.fds << "," << s.submitted << "," << s.status_calls << ","
        << s.watch_streams << "\n";
  }
  nlohmann::json j = {{"minutes", o.minutes},
                      {"jobs_submitted", static_cast<int64_t>(submitted)},
                      {"submissions_refused_at_the_active_job_limit", static_cast<int64_t>(refused_at_limit)},
                      {"status_and_list_calls", static_cast<int64_t>(status_calls)},
                      {"watch_streams", static_cast<int64_t>(watch_streams)},
                      {"call_failures", static_cast<int64_t>(failures)},
                      {"failure_examples", failure_examples},
                      {"controller_died", died},
                      {"jobs_lost", lost},
                      {"jobs_not_succeeded", not_succeeded},
                      {"jobs_lost_after_restart", lost_after},
                      {"rss_mib_after_warmup", warm.rss_mib},
                      {"rss_mib_last", last.rss_mib},
                      {"rss_mib_after_all_ended", final_rss},
                      {"fds_after_warmup", warm.fds},
                      {"fds_last", last.fds},
                      {"fds_after_all_ended", final_fds},
                      {"samples", series}};
  j["provenance"] = moex::ProvenanceJson();
  std::ofstream(std::filesystem::path(o.out) / "soak.json") << j.dump(2) << "\n";
  Plot(samples, (std::filesystem::path(o.out) / "soak-memory.svg").string(), "moex serve resident memory under soak",
       "MiB", &Sample::rss_mib, nullptr);
  Plot(samples, (std::filesystem::path(o.out) / "soak-fds.svg").string(), "moex serve open file descriptors under soak",
       "fds", nullptr, &Sample::fds);
  std::printf("soak %.1f min: %ld jobs (%ld refusals at the limit), %ld status/list calls, %ld watch streams, %ld "
              "call failures; lost %ld, not SUCCEEDED %ld, lost after restart %ld; rss %.1f -> %.1f MiB "
              "(all ended: %.1f), fds %d -> %d (all ended: %d)\n",
              o.minutes, static_cast<long>(submitted.load()), static_cast<long>(refused_at_limit.load()),
              static_cast<long>(status_calls.load()), static_cast<long>(watch_streams.load()),
              static_cast<long>(failures.load()), static_cast<long>(lost), static_cast<long>(not_succeeded),
              static_cast<long>(lost_after), warm.rss_mib, last.rss_mib, final_rss, warm.fds, last.fds, final_fds);
  for (const std::string& f : failure_examples) std::printf("  failure: %s\n", f.c_str());
  if (!died.empty()) std::printf("  FAILED: %s\n", died.c_str());
  return died.empty() && lost == 0 && not_succeeded == 0 && lost_after == 0 && failures == 0 ? 0 : 1;
}
