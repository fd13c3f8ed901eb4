#include "moex/worker/worker_session.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include "moex/cluster/credentials.h"
#include "moex/cluster/placement_proto.h"
#include "moex/cluster/rank_metadata.h"
#include "moex/cluster/rank_secret.h"
#include "moex/core/str_cat.h"
#include "worker_warn.h"

namespace moex::worker {

using internal::Warn;
namespace {

void Prepare(grpc::ClientContext* context, const std::string& token, double seconds, int attempt = 0) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
  // The job's rank secret, handed to its ranks at launch.
  static const char* secret = std::getenv(cluster::kRankSecretEnv);
  if (secret != nullptr && *secret != '\0') context->AddMetadata(cluster::kRankSecretMetadata, secret);
  if (attempt > 0) context->AddMetadata(cluster::kAttemptMetadata, std::to_string(attempt));
}

}  // namespace

moex::v1::EndReason FailureReasonOf(const absl::Status& status, bool waiting_for_others, bool stopped) {
  if (stopped || waiting_for_others) return moex::v1::END_REASON_RANK_LOST;  // another's failure seen from here
  switch (status.code()) {
    // A peer hung up, a wait ran out, the job was stopped: what the rank
    // saw of another's failure, even where it cannot tell whose.
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return moex::v1::END_REASON_RANK_LOST;
    // What the rank was given: a config, a checkpoint, an input, a spec
    // field. The same input fails the same way again. (Not DATA_LOSS: a
    // transport's short receive from a dying peer says that too.)
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
      return moex::v1::END_REASON_BAD_INPUT;
    case absl::StatusCode::kResourceExhausted:
      return moex::v1::END_REASON_OUT_OF_MEMORY;
    default:
      return moex::v1::END_REASON_RANK_ERROR;
  }
}

absl::StatusOr<std::unique_ptr<WorkerSession>> WorkerSession::Register(const std::string& controller,
                                                                      const std::string& job_id, int rank,
                                                                      int world_size, int attempt,
                                                                      double connect_seconds) {
  auto session = std::unique_ptr<WorkerSession>(new WorkerSession());
  auto credentials = cluster::ClientCredentials(cluster::ClientTlsFromEnvironment());
  if (!credentials.ok()) return credentials.status();
  // Reconnect within seconds when the controller restarts (gRPC's default
  // backoff grows to minutes), so heartbeats resume before the adoption
  // deadline.
  grpc::ChannelArguments arguments;
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  arguments.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  auto channel = grpc::CreateCustomChannel(controller, *credentials, arguments);
  session->stub_ = moex::v1::ClusterService::NewStub(channel);
  session->placements_ = moex::v1::PlacementService::NewStub(channel);
  session->job_id_ = job_id;
  session->rank_ = rank;
  session->attempt_ = attempt;
  if (const char* token = std::getenv("MOEX_TOKEN")) session->token_ = token;
  char host[256] = "unknown";
  gethostname(host, sizeof(host) - 1);
  moex::v1::RegisterRankRequest request;
  request.set_job_id(job_id);
  request.set_rank(rank);
  request.set_world_size(world_size);
  // Under Slurm, the node's name as Slurm knows it (what --exclude and
  // --nodelist take), which may differ from the host name.
  const char* slurm_node = std::getenv("SLURMD_NODENAME");
  request.set_host(slurm_node != nullptr && *slurm_node != '\0' ? slurm_node : host);
  request.set_pid(getpid());
  request.set_device("cpu");
  // Under Slurm, the job the rank runs in: the controller records it on the attempt.
  if (const char* slurm_job = std::getenv("SLURM_JOB_ID"); slurm_job != nullptr) request.set_launcher_job_id(slurm_job);
  moex::v1::RegisterRankResponse response;
  auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(connect_seconds * 1000));
  grpc::Status status;
  do {
    grpc::ClientContext context;
    Prepare(&context, session->token_, 5, session->attempt_);
    status = session->stub_->RegisterRank(&context, request, &response);
    if (status.ok() || status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  } while (std::chrono::steady_clock::now() < give_up);
  if (!status.ok()) {
    return absl::UnavailableError(StrCat("rank ", rank, " cannot register with the controller at ", controller,
                                         ": ", status.error_message()));
  }
  session->spec_ = response.spec();
  session->first_step_ = response.first_step();
  session->weight_cache_dir_ = response.weight_cache_dir();
  session->heartbeat_interval_ms_ = response.heartbeat_interval_ms() > 0 ? response.heartbeat_interval_ms() : 1000;
  session->heartbeat_ = std::thread([s = session.get()] { s->HeartbeatLoop(); });
  session->reporter_ = std::thread([s = session.get()] { s->ReportLoop(); });
  return session;
}

WorkerSession::~WorkerSession() {
  {
    std::lock_guard<std::mutex> lock(report_mutex_);  // so that the report thread cannot miss it
    stop_.store(true);
  }
  report_ready_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (reporter_.joinable()) reporter_.join();
}

void WorkerSession::Finished() {
  std::optional<moex::v1::ReportStepRequest> unsent;
  {
    std::lock_guard<std::mutex> lock(report_mutex_);  // so that the report thread cannot miss it
    stop_.store(true);
    if (!final_report_) unsent = std::move(pending_report_);
    pending_report_.reset();
  }
  report_ready_.notify_all();
  if (heartbeat_.joinable()) heartbeat_.join();
  if (reporter_.joinable()) reporter_.join();
  // The newest figures not yet sent (a job that stopped without a final
  // report, e.g. on a cancel), once, briefly.
  if (unsent) (void)SendReport(*unsent, 2, /*unless_final=*/false);
  moex::v1::HeartbeatRequest request;
  request.set_job_id(job_id_);
  request.set_rank(rank_);
  request.set_step(step_.load());
  request.set_done(true);
  moex::v1::HeartbeatResponse response;
  grpc::ClientContext context;
  Prepare(&context, token_, 5, attempt_);
  (void)stub_->Heartbeat(&context, request, &response);  // best effort: mpirun's exit decides anyway
}

void WorkerSession::HeartbeatLoop() {
  while (!stop_.load()) {
    moex::v1::HeartbeatRequest request;
    request.set_job_id(job_id_);
    request.set_rank(rank_);
    request.set_step(step_.load());
    moex::v1::HeartbeatResponse response;
    grpc::ClientContext context;
    Prepare(&context, token_, 2, attempt_);
    grpc::Status status = stub_->Heartbeat(&context, request, &response);
    if (status.ok()) {
      if (response.cancel()) cancelled_.store(true);
      placement_version_.store(response.placement_version());
    } else if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      cancelled_.store(true);  // the job, or this attempt of it, has ended: stop
    }
    for (int waited = 0; waited < heartbeat_interval_ms_ && !stop_.load(); waited += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

absl::StatusOr<placement::Placement> WorkerSession::FetchPlacement() {
  moex::v1::GetPlacementRequest request;
  request.set_job_id(job_id_);
  moex::v1::Placement placement;
  grpc::ClientContext context;
  Prepare(&context, token_, 10);
  grpc::Status status = placements_->GetPlacement(&context, request, &placement);
  if (!status.ok()) {
    return absl::UnavailableError(StrCat("rank ", rank_, " cannot fetch the placement of job ", job_id_, ": ",
                                         status.error_message()));
  }
  absl::StatusOr<placement::Placement> made = cluster::FromProto(placement);
  if (!made.ok()) {
    return absl::DataLossError(StrCat("rank ", rank_, ": the controller's placement of job ", job_id_, " is unusable: ",
                                      made.status().message()));
  }
  return made;
}

grpc::Status WorkerSession::SendReport(const moex::v1::ReportStepRequest& request, double seconds, bool unless_final) {
  std::lock_guard<std::mutex> sending(send_mutex_);
  if (unless_final) {
    // The final report went first (it takes send_mutex_ too): nothing older follows it.
    std::lock_guard<std::mutex> lock(report_mutex_);
    if (final_report_) return grpc::Status::OK;
  }
  moex::v1::ReportStepResponse response;
  grpc::ClientContext context;
  Prepare(&context, token_, seconds, attempt_);
  grpc::Status status = stub_->ReportStep(&context, request, &response);
  if (status.ok()) placement_version_.store(response.placement_version());
  return status;
}

void WorkerSession::ReportLoop() {
  int backoff_ms = 200;
  while (true) {
    moex::v1::ReportStepRequest request;
    {
      std::unique_lock<std::mutex> lock(report_mutex_);
      report_ready_.wait(lock, [this] { return stop_.load() || pending_report_.has_value(); });
      if (stop_.load()) return;
      if (final_report_) {  // the last report went from the caller's thread: nothing older follows it
        pending_report_.reset();
        continue;
      }
      request = std::move(*pending_report_);
      pending_report_.reset();
    }
    const grpc::Status status = SendReport(request, 5, /*unless_final=*/true);
    bool retry = false;
    {
      std::lock_guard<std::mutex> lock(report_mutex_);
      if (status.ok()) {
        if (unreachable_said_) Warn(rank_, StrCat("the controller answers again; step reports resumed at step ", request.step()));
        unreachable_said_ = false;
        backoff_ms = 200;
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                 status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
        if (!unreachable_said_) {
          Warn(rank_, StrCat("cannot report step ", request.step(), " to the controller (", status.error_message(),
                             "); the job goes on, and reports are retried every ", 2, " s at most until it answers"));
        }
        unreachable_said_ = true;
        // Kept unless a newer one came meanwhile: the newest figures win.
        if (!pending_report_.has_value() && !final_report_) pending_report_ = std::move(request);
        retry = true;
      } else {
        // Refused (the attempt ended, a bad figure): said, not retried.
        Warn(rank_, StrCat("the controller refused step ", request.step(), "'s report: ", status.error_message()));
      }
    }
    if (retry) {
      for (int waited = 0; waited < backoff_ms && !stop_.load(); waited += 50) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      backoff_ms = std::min(2000, backoff_ms * 2);
    }
  }
}

absl::Status WorkerSession::ReportStep(int64_t step, const moex::v1::JobMetrics& metrics,
                                       const std::vector<int64_t>& tokens_per_expert, bool final,
                                       const std::vector<moex::v1::BenchPointResult>& bench) {
  moex::v1::ReportStepRequest request;
  request.set_job_id(job_id_);
  request.set_rank(rank_);
  request.set_step(step);
  *request.mutable_metrics() = metrics;
  for (int64_t n : tokens_per_expert) request.add_tokens_per_expert(n);
  for (const moex::v1::BenchPointResult& point : bench) *request.add_bench() = point;
  if (!final) {
    {
      std::lock_guard<std::mutex> lock(report_mutex_);
      pending_report_ = std::move(request);
    }
    report_ready_.notify_one();
    return absl::OkStatus();
  }
  {
    // The last report supersedes any pending one, and goes after the one in
    // flight (send_mutex_), so that steps reach the controller in order.
    std::lock_guard<std::mutex> lock(report_mutex_);
    pending_report_.reset();
    final_report_ = true;
  }
  auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  grpc::Status status;
  do {
    status = SendReport(request, 5, /*unless_final=*/false);
    if (status.ok() || (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
                        status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  } while (std::chrono::steady_clock::now() < give_up);
  if (!status.ok()) return absl::UnavailableError(StrCat("report to the controller: ", status.error_message()));
  return absl::OkStatus();
}

void WorkerSession::ReportFailure(const absl::Status& status, const std::vector<int>& waiting_for, bool stopped) {
  moex::v1::ReportFailureRequest request;
  request.set_job_id(job_id_);
  moex::v1::RankFailure* failure = request.mutable_failure();
  failure->set_rank(rank_);
  failure->set_reason(FailureReasonOf(status, !waiting_for.empty(), stopped));
  failure->set_message(std::string(status.message().substr(0, 1024)));
  for (int r : waiting_for) failure->add_waiting_for(r);
  failure->set_stopped(stopped);
  moex::v1::ReportFailureResponse response;
  grpc::ClientContext context;
  Prepare(&context, token_, 1, attempt_);
  (void)stub_->ReportFailure(&context, request, &response);  // best effort: the launcher's exit decides anyway
}

}  // namespace moex::worker
