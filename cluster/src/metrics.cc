#include "moex/cluster/metrics.h"

#include <unistd.h>

#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <string_view>

#include "moex/core/echo.h"
#include "moex/core/str_cat.h"
#include "moex/v1/placement.pb.h"
#include "prometheus/exposer.h"

namespace moex::cluster {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

MetricFamily& FamilyBuilder::Family(const std::string& name, const std::string& help, MetricType type) {
  auto [it, made] = index_.try_emplace(name, families_.size());
  if (made) families_.push_back(MetricFamily{name, help, type, {}});
  return families_[it->second];
}

void FamilyBuilder::Gauge(const std::string& name, const std::string& help, Labels labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.gauge.value = value;
  Family(name, help, MetricType::Gauge).metric.push_back(std::move(metric));
}

void FamilyBuilder::Counter(const std::string& name, const std::string& help, Labels labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  metric.counter.value = value;
  Family(name, help, MetricType::Counter).metric.push_back(std::move(metric));
}

std::vector<MetricFamily> FamilyBuilder::Take() {
  index_.clear();
  return std::move(families_);
}

namespace {

std::string StateLabel(moex::v1::JobState state) {
  std::string name = moex::v1::JobState_Name(state);
  constexpr std::string_view kPrefix = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(kPrefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

}  // namespace

std::vector<MetricFamily> BuildOnOwnStack(const std::function<std::vector<MetricFamily>()>& build) {
  std::vector<MetricFamily> families;
  std::thread worker([&] { families = build(); });
  worker.join();
  return families;
}

void AddJobFamilies(const moex::v1::Job& job, const JobExtras& extras, FamilyBuilder& out) {
  const Labels id = {{"job_id", job.id()}};
  const moex::v1::JobSpec& spec = job.spec();
  const moex::v1::JobMetrics& m = job.metrics();
  // User text in labels is capped (core/echo.h): a label is a series' name.
  out.Gauge("moex_job_info", "A pending or running job (1), its name, model, state, device and transport",
            {{"job_id", job.id()},
             {"name", Echo(spec.name())},
             {"model", Echo(spec.model())},
             {"state", StateLabel(job.state())},
             {"device", Echo(spec.device())},
             {"transport", Echo(spec.transport())}},
            1);
  out.Gauge("moex_job_tokens_per_second", "Tokens a second the whole job processes (median over its steps)", id,
            m.tokens_per_second());
  out.Gauge("moex_job_step", "Steps the job has done (rank 0's report)", id, static_cast<double>(m.steps_done()));
  out.Gauge("moex_job_steps", "Steps the job runs in all", id, spec.steps());
  out.Gauge("moex_job_dispatch_seconds", "Seconds of one step's dispatch (median over the steps, slowest rank)", id,
            m.dispatch_seconds());
  out.Gauge("moex_job_combine_seconds", "Seconds of one step's combine (median over the steps, slowest rank)", id,
            m.combine_seconds());
  out.Gauge("moex_job_imbalance", "Max over mean of the ranks' routed tokens (1: balanced; median over the steps)", id,
            m.imbalance());
  // vLLM's and SGLang's metric: the inverse, 1 balanced, toward 0 skewed.
  out.Gauge("moex_job_balancedness", "Mean over max of the ranks' routed tokens (vLLM/SGLang's figure; 1: balanced)",
            id, m.imbalance() > 0 ? 1.0 / m.imbalance() : 0.0);
  out.Gauge("moex_job_window_imbalance", "Max over mean rank load of the load window on the published placement", id,
            job.load().window_imbalance());
  out.Gauge("moex_job_placement_version", "Placement version the ranks serve", id,
            static_cast<double>(m.placement_version()));
  out.Gauge("moex_job_placement_published_version", "Newest placement version the controller published", id,
            static_cast<double>(job.placement().version()));
  out.Gauge("moex_job_attempt", "The job's current launch (1: first; more after restarts)", id,
            job.attempts_size() == 0 ? 1.0 : static_cast<double>(job.attempts_size()));
  out.Gauge("moex_job_world_size", "Ranks of the current attempt", id,
            job.world_size() > 0 ? job.world_size() : spec.world_size());
  out.Gauge("moex_job_ranks_registered", "Ranks that registered with the controller", id, job.ranks_registered());
  int64_t moved = 0;
  for (const moex::v1::RebalanceRecord& r : job.rebalances()) moved += r.experts_moved();
  out.Counter("moex_job_rebalances_total", "Placement changes published for the job", id, job.rebalances_size());
  out.Counter("moex_job_experts_moved_total", "Expert replicas the job's placement changes moved", id,
              static_cast<double>(moved));
  // The heatmap: tokens routed to each expert over the load window (the
  // rebalance window's last steps), else the last step reported.
  const std::string layer = spec.has_layer() ? std::to_string(spec.layer()) : "first";
  const bool window = job.load().window_tokens_per_expert_size() > 0;
  const int experts = window ? job.load().window_tokens_per_expert_size() : job.tokens_per_expert_size();
  out.Gauge("moex_job_load_window_steps", "Steps the per-expert token counts are summed over", id,
            window ? job.load().window_steps() : (experts > 0 ? 1 : 0));
  for (int e = 0; e < experts; ++e) {
    const double tokens = window ? job.load().window_tokens_per_expert(e) : static_cast<double>(job.tokens_per_expert(e));
    out.Gauge("moex_expert_tokens", "Tokens routed to a logical expert over the job's load window (moex_job_load_window_steps)",
              {{"job_id", job.id()}, {"layer", layer}, {"expert", std::to_string(e)}}, tokens);
  }
  for (const auto& [rank, age] : extras.heartbeat_age_seconds) {
    out.Gauge("moex_rank_heartbeat_age_seconds", "Seconds since the rank's last heartbeat",
              {{"job_id", job.id()}, {"rank", std::to_string(rank)}}, age);
  }
}

void AddProcessFamilies(FamilyBuilder& out) {
  // /proc/self/stat: utime and stime (fields 14, 15) in clock ticks, after
  // the command name in parentheses; /proc/self/statm: resident pages.
  std::ifstream statm("/proc/self/statm");
  long long size_pages = 0, resident_pages = 0;
  if (statm >> size_pages >> resident_pages) {
    out.Gauge("process_resident_memory_bytes", "Resident memory of this process", {},
              static_cast<double>(resident_pages) * static_cast<double>(sysconf(_SC_PAGESIZE)));
  }
  std::ifstream stat("/proc/self/stat");
  std::string line;
  if (std::getline(stat, line)) {
    const size_t close = line.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(line.substr(close + 2));
      std::string field;
      double utime = 0, stime = 0;
      // Field 3 (state) is the first after the name.
      for (int i = 3; i <= 15 && fields >> field; ++i) {
        if (i == 14) utime = std::stod(field);
        if (i == 15) stime = std::stod(field);
      }
      out.Counter("process_cpu_seconds_total", "User and system CPU seconds of this process", {},
                  (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK)));
    }
  }
  std::error_code error;
  int fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++fds;
  }
  if (!error) out.Gauge("process_open_fds", "Open file descriptors of this process", {}, fds);
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& listen, const std::string& flag, std::shared_ptr<prometheus::Collectable> collectable) {
  const size_t colon = listen.rfind(':');
  const std::string port_text = colon == std::string::npos ? "" : listen.substr(colon + 1);
  if (colon == std::string::npos || colon == 0 || port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos || std::stoi(port_text) > 65535) {
    return absl::InvalidArgumentError(
        StrCat(flag, " '", Echo(listen), "' is not HOST:PORT (e.g. 127.0.0.1:9464; port 0 picks a free one)"));
  }
  auto endpoint = std::unique_ptr<MetricsEndpoint>(new MetricsEndpoint());
  try {
    // One thread serves scrapes; CivetWeb binds in the constructor.
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", listen, "num_threads", "2"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(StrCat(flag, ": cannot serve metrics on ", Echo(listen), " (", e.what(),
                                         "): is the port in use, or the host not an address of this machine?"));
  }
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(StrCat(flag, ": metrics on ", Echo(listen), " are not listening"));
  endpoint->port_ = ports.front();
  endpoint->address_ = StrCat(listen.substr(0, colon), ":", endpoint->port_);
  endpoint->collectable_ = std::move(collectable);
  endpoint->exposer_->RegisterCollectable(endpoint->collectable_);
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  // Stops serving before the collectable (and what it reads) goes.
  exposer_.reset();
}

}  // namespace moex::cluster
