#include "controller_metrics.h"

#include <algorithm>
#include <cctype>

#include "moex/cluster/metrics.h"

namespace moex::cluster {

namespace {

constexpr size_t kMaxMethods = 64;

// gRPC's names of its status codes, as go-grpc-prometheus labels them.
std::string CodeName(int code) {
  static const char* const kNames[] = {"OK",
                                       "Canceled",
                                       "Unknown",
                                       "InvalidArgument",
                                       "DeadlineExceeded",
                                       "NotFound",
                                       "AlreadyExists",
                                       "PermissionDenied",
                                       "ResourceExhausted",
                                       "FailedPrecondition",
                                       "Aborted",
                                       "OutOfRange",
                                       "Unimplemented",
                                       "Internal",
                                       "Unavailable",
                                       "DataLoss",
                                       "Unauthenticated"};
  return code >= 0 && code < static_cast<int>(std::size(kNames)) ? kNames[code] : "Unknown";
}

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string EnumLabel(std::string name, std::string_view prefix) {
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  return Lower(std::move(name));
}

class CallCounting final : public grpc::experimental::Interceptor {
 public:
  CallCounting(CallCounter* counter, std::string method) : counter_(counter), method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      counter_->Count(method_, static_cast<int>(methods->GetSendStatus().error_code()));
    }
    methods->Proceed();
  }

 private:
  CallCounter* counter_;
  std::string method_;
};

}  // namespace

void CallCounter::Count(const std::string& full_method, int code) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::pair<std::string, std::string> names{"other", "other"};
  if (auto known = methods_.find(full_method); known != methods_.end()) {
    names = known->second;
  } else if (const size_t slash = full_method.rfind('/'); methods_.size() < kMaxMethods && !full_method.empty() && full_method.size() <= 128 &&
                                                          full_method.front() == '/' && slash != std::string::npos &&
                                                          slash > 1) {
    // "/moex.v1.JobService/SubmitJob" -> (moex.v1.JobService, SubmitJob).
    names = {full_method.substr(1, slash - 1), full_method.substr(slash + 1)};
    methods_.emplace(full_method, names);
  }
  ++calls_[{names.first, names.second, CodeName(code)}];
}

std::map<std::tuple<std::string, std::string, std::string>, int64_t> CallCounter::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return calls_;
}

grpc::experimental::Interceptor* CallCountingFactory::CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) {
  return new CallCounting(counter_.get(), info->method());
}

void ControllerCollector::Attach(JobManager* jobs, std::shared_ptr<std::atomic<int>> open_streams) {
  std::lock_guard<std::mutex> lock(mutex_);
  jobs_ = jobs;
  open_streams_ = std::move(open_streams);
}

std::vector<prometheus::MetricFamily> ControllerCollector::Collect() const {
  return BuildOnOwnStack([this] { return Build(); });
}

std::vector<prometheus::MetricFamily> ControllerCollector::Build() const {
  FamilyBuilder out;
  JobManager* jobs = nullptr;
  std::shared_ptr<std::atomic<int>> open_streams;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs = jobs_;
    open_streams = open_streams_;
  }
  AddProcessFamilies(out);
  if (jobs == nullptr) return out.Take();
  JobManager::Figures figures = jobs->MetricsFigures();
  // Every state, at 0 too: a series that disappears is not a series at 0.
  for (moex::v1::JobState state : {moex::v1::JOB_STATE_PENDING, moex::v1::JOB_STATE_RUNNING,
                                   moex::v1::JOB_STATE_SUCCEEDED, moex::v1::JOB_STATE_FAILED,
                                   moex::v1::JOB_STATE_CANCELLED}) {
    out.Gauge("moex_jobs", "Jobs the controller knows, by state (ended ones until deleted)",
              {{"state", EnumLabel(moex::v1::JobState_Name(state), "JOB_STATE_")}},
              static_cast<double>(figures.jobs_by_state[state]));
  }
  for (const auto& [key, count] : figures.ended) {
    out.Counter("moex_jobs_ended_total", "Jobs that ended since the controller started, by state and reason",
                {{"state", EnumLabel(moex::v1::JobState_Name(key.first), "JOB_STATE_")},
                 {"reason", EnumLabel(moex::v1::EndReason_Name(key.second), "END_REASON_")}},
                static_cast<double>(count));
  }
  out.Counter("moex_job_restarts_total", "Relaunches of failed jobs (max_restarts) since the controller started", {},
              static_cast<double>(figures.restarts));
  out.Counter("moex_rebalances_total", "Placement changes published since the controller started", {},
              static_cast<double>(figures.rebalances));
  out.Counter("moex_experts_moved_total", "Expert replicas those placement changes moved", {},
              static_cast<double>(figures.experts_moved));
  const auto calls = calls_->Snapshot();
  int64_t accepted = 0;
  for (const auto& [key, count] : calls) {
    const auto& [service, method, code] = key;
    out.Counter("grpc_server_handled_total", "gRPC calls answered, by service, method and status code",
                {{"grpc_service", service}, {"grpc_method", method}, {"grpc_code", code}},
                static_cast<double>(count));
    if (service == "moex.v1.JobService" && method == "SubmitJob") {
      if (code == "OK") accepted += count;
      if (code != "OK") {
        out.Counter("moex_job_submits_total", "Job submissions, by outcome (accepted, or the refusal's gRPC code)",
                    {{"outcome", code}}, static_cast<double>(count));
      }
    }
  }
  out.Counter("moex_job_submits_total", "Job submissions, by outcome (accepted, or the refusal's gRPC code)",
              {{"outcome", "accepted"}}, static_cast<double>(accepted));
  out.Gauge("moex_controller_open_streams", "WatchJob and GetJobLogs streams open now", {},
            open_streams ? open_streams->load() : 0);
  out.Gauge("moex_controller_jobs_in_memory", "Job records held in memory (the rest are read from the store)", {},
            static_cast<double>(figures.jobs_in_memory));
  for (const auto& [job, ages] : figures.active) AddJobFamilies(job, JobExtras{ages}, out);
  return out.Take();
}

}  // namespace moex::cluster
