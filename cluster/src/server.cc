#include "moex/cluster/server.h"

#include "absl/strings/match.h"
#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "controller_metrics.h"
#include "moex/cluster/credentials.h"
#include "moex/cluster/metrics.h"
#include "moex/cluster/job_list.h"
#include "moex/cluster/rank_metadata.h"
#include "moex/core/echo.h"
#include "moex/core/status_macros.h"
#include "moex/core/log.h"
#include "moex/core/str_cat.h"
#include "moex/v1/cluster.grpc.pb.h"
#include "moex/v1/job.grpc.pb.h"
#include "moex/v1/placement.grpc.pb.h"

namespace moex::cluster {
namespace {

// absl::Status becomes grpc::Status here and nowhere else.
grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

constexpr char kNeedsToken[] = "this controller needs a bearer token (moex --token-file)";

// Whether a call's metadata carries "authorization: Bearer <token>".
bool CarriesToken(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata, const std::string& token) {
  auto it = metadata.find("authorization");
  const std::string expected = "Bearer " + token;
  // Compared in constant time: how much of a guess matched must not show.
  return it != metadata.end() && it->second.size() == expected.size() &&
         CRYPTO_memcmp(it->second.data(), expected.data(), expected.size()) == 0;
}

// When the controller has a token, every call must carry it.
grpc::Status Authorise(const grpc::CallbackServerContext* context, const std::string& token) {
  if (token.empty() || CarriesToken(context->client_metadata(), token)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, kNeedsToken);
}

// Every call but health's (open, for probes) must carry the token, the
// calls of services moex does not write too: server reflection, which
// would list every service and message to anyone, and whatever a plugin
// adds. A call without it is ended UNAUTHENTICATED as soon as its metadata
// arrives, before its handler reads a request. The handler still runs
// (gRPC has no way for an interceptor to skip it), which is why moex's own
// handlers check the token themselves (Authorise): they must not act on a
// refused call.
class TokenInterceptor final : public grpc::experimental::Interceptor {
 public:
  TokenInterceptor(grpc::experimental::ServerRpcInfo* info, const std::string& token) : info_(info), token_(token) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::POST_RECV_INITIAL_METADATA) &&
        !CarriesToken(*methods->GetRecvInitialMetadata(), token_)) {
      grpc_call_cancel_with_status(info_->server_context()->c_call(), GRPC_STATUS_UNAUTHENTICATED, kNeedsToken,
                                   nullptr);
    }
    methods->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const std::string& token_;  // the factory's, which outlives the server's calls
};

class TokenInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::string token) : token_(std::move(token)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    if (absl::StartsWith(info->method(), "/grpc.health.v1.Health/")) return nullptr;
    return new TokenInterceptor(info, token_);
  }

 private:
  const std::string token_;
};

// Whether every address `host` names is this host's loopback (127.0.0.0/8,
// ::1): only this host's users can reach a controller listening there.
// An empty host (":PORT") is every interface; a name that does not resolve
// is not known to be loopback.
bool LoopbackOnly(std::string host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return false;
  if (host == "localhost") return true;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return false;
  bool loopback = found != nullptr;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      const auto* v4 = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
      loopback = loopback && (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
    } else if (a->ai_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
      const in6_addr& address = v6->sin6_addr;
      loopback = loopback && (IN6_IS_ADDR_LOOPBACK(&address) ||
                              (IN6_IS_ADDR_V4MAPPED(&address) && address.s6_addr[12] == 127));
    } else {
      loopback = false;
    }
  }
  freeaddrinfo(found);
  return loopback;
}

// A controller other hosts can reach runs jobs for whoever connects: it
// must ask them for something (a bearer token, or a client certificate
// under mutual TLS) unless its operator says plainly that it need not.
absl::Status CheckExposure(const ControllerOptions& options) {
  if (!options.token.empty() || !options.tls_client_ca.empty() || options.insecure) return absl::OkStatus();
  const std::string& listen = options.listen;
  if (listen.rfind("unix:", 0) == 0 || listen.rfind("unix-abstract:", 0) == 0) return absl::OkStatus();
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  if (LoopbackOnly(host)) return absl::OkStatus();
  return absl::FailedPreconditionError(StrCat(
      "--listen ", listen, " is reachable from other hosts, and nothing would be asked of a client there: anyone "
      "who connects could run jobs as this user. Give --token-file FILE (a bearer token), or --tls-cert, --tls-key "
      "and --tls-client-ca (mutual TLS), or --insecure if the network itself is trusted; or listen on loopback "
      "(127.0.0.1)"));
}

// A rank call must carry its job's rank secret (rank_secret.h).
absl::Status CheckRankSecret(const grpc::CallbackServerContext* context, const JobManager& jobs,
                             const std::string& job_id, std::string_view call) {
  auto metadata = context->client_metadata();
  auto it = metadata.find(kRankSecretMetadata);
  const std::string presented = it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
  if (jobs.RankSecretOk(job_id, presented)) return absl::OkStatus();
  return absl::PermissionDeniedError(StrCat(call, " for job ", Echo(job_id), ": ",
                                            presented.empty() ? "no rank secret" : "not the job's rank secret",
                                            " (metadata ", kRankSecretMetadata,
                                            "): only the job's own ranks may make rank calls"));
}

// The attempt a rank call says it comes from (rank_metadata.h): 0 when it
// does not say, -1 when what it says is not a number.
int CallerAttempt(const grpc::CallbackServerContext* context) {
  auto metadata = context->client_metadata();
  auto it = metadata.find(kAttemptMetadata);
  if (it == metadata.end()) return 0;
  int attempt = 0;
  if (!absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &attempt) || attempt <= 0) return -1;
  return attempt;
}

// UNAVAILABLE "cannot listen on ADDR: in use" when a socket of this host
// listens on `listen`'s TCP port already. gRPC does not say why a bind
// failed, and checking first leaves the state dir's jobs untouched on a port
// that is taken. Addresses that are not host:port, and port 0, pass.
absl::Status CheckAddressFree(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || listen.rfind("unix:", 0) == 0 || listen.find("://") != std::string::npos) {
    return absl::OkStatus();
  }
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port.empty() || port == "0") return absl::OkStatus();
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found) != 0) return absl::OkStatus();
  bool in_use = false;
  for (addrinfo* a = found; a != nullptr && !in_use; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;  // as gRPC binds: a port in TIME_WAIT is free
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    in_use = bind(fd, a->ai_addr, a->ai_addrlen) != 0 && errno == EADDRINUSE;
    close(fd);
  }
  freeaddrinfo(found);
  if (in_use) return absl::UnavailableError(StrCat("cannot listen on ", listen, ": in use"));
  return absl::OkStatus();
}

// Every unary handler: authorise, run `call` to fill the response, finish
// with its status.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const std::string& token,
                                Response* response, Call call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  grpc::Status auth = Authorise(context, token);
  reactor->Finish(auth.ok() ? ToGrpc(call(response)) : auth);
  return reactor;
}

// Unary for calls whose manager method answers StatusOr<Response>.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const std::string& token,
                                 Response* response, Call call) {
  return Unary(context, token, response, [&](Response* out) -> absl::Status {
    auto answer = call();
    if (answer.ok()) *out = *answer;
    return answer.status();
  });
}

// A server stream fed from other threads: Push queues, one write in flight
// at a time, Close finishes once the queue drains. Owned by gRPC: it deletes
// itself in OnDone. `alive` lets feeders stop once the client has gone.
template <typename Message>
class QueuedWriter : public grpc::ServerWriteReactor<Message> {
 public:
  std::shared_ptr<std::atomic<bool>> alive = std::make_shared<std::atomic<bool>>(true);

  void Push(Message message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    queue_.push_back(std::move(message));
    if (!writing_) WriteNext();
  }
  void Close(grpc::Status status) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    closed_ = true;
    final_ = std::move(status);
    if (!writing_) FinishOnce();
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    writing_ = false;
    if (!ok) {  // the stream is broken: drop the rest
      queue_.clear();
      if (!closed_) {
        closed_ = true;
        final_ = grpc::Status::CANCELLED;
      }
      FinishOnce();
      return;
    }
    queue_.pop_front();
    if (!queue_.empty()) {
      WriteNext();
    } else if (closed_) {
      FinishOnce();
    }
  }
  // The client went away: stop the feeders and finish now (a reactor that
  // is never finished would hold its stream, and its slot, for good).
  void OnCancel() override {
    alive->store(false);
    Close(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    alive->store(false);
    if (on_done) on_done();
    // A Close or OnWriteDone on another thread may still hold the lock it
    // called Finish under: let it go before the reactor does.
    { std::lock_guard<std::mutex> lock(mutex_); }
    delete this;
  }
  std::function<void()> on_done;

 private:
  void WriteNext() {
    writing_ = true;
    this->StartWrite(&queue_.front());
  }
  void FinishOnce() {
    if (finished_) return;
    finished_ = true;
    this->Finish(final_);
  }
  std::mutex mutex_;
  std::deque<Message> queue_;
  bool writing_ = false;
  bool closed_ = false;
  bool finished_ = false;
  grpc::Status final_;
};

}  // namespace

struct Controller::Services {
  struct Jobs final : moex::v1::JobService::CallbackService {
    JobManager* jobs;
    std::string token;
    // Watch and log streams open at once: each holds a subscription or a
    // reader thread, so a flood of them is refused, not served.
    int max_streams = 256;
    std::shared_ptr<std::atomic<int>> open_streams = std::make_shared<std::atomic<int>>(0);

    // Counts a new stream in; false (and the writer closed with
    // RESOURCE_EXHAUSTED) past the limit. The writer counts it out when done.
    template <typename Message>
    bool Admit(QueuedWriter<Message>* writer) {
      if (open_streams->fetch_add(1) >= max_streams) {
        open_streams->fetch_sub(1);
        writer->Close(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   StrCat(max_streams, " watch and log streams are open, the limit; close some")));
        return false;
      }
      writer->on_done = [open = open_streams] { open->fetch_sub(1); };
      return true;
    }

    grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* c, const moex::v1::SubmitJobRequest* r,
                                        moex::v1::Job* out) override {
      return Answer(c, token, out, [&] {
        absl::StatusOr<moex::v1::Job> job = jobs->Submit(r->spec());
        if (!job.ok()) {
          log::Warn("submit refused", {{"code", absl::StatusCodeToString(job.status().code())},
                                       {"peer", c->peer()},
                                       {"why", Echo(std::string(job.status().message()))}});
        }
        return job;
      });
    }
    grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* c, const moex::v1::GetJobRequest* r,
                                     moex::v1::Job* out) override {
      return Answer(c, token, out, [&] { return jobs->Get(r->id()); });
    }
    grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* c, const moex::v1::ListJobsRequest* r,
                                       moex::v1::ListJobsResponse* out) override {
      return Answer(c, token, out, [&] { return ListJobsPage(*jobs, *r); });
    }
    grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* c, const moex::v1::CancelJobRequest* r,
                                        moex::v1::Job* out) override {
      return Answer(c, token, out, [&] { return jobs->Cancel(r->id()); });
    }
    grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* c, const moex::v1::DeleteJobRequest* r,
                                        moex::v1::Job* out) override {
      return Answer(c, token, out, [&] { return jobs->Delete(r->id()); });
    }

    grpc::ServerWriteReactor<moex::v1::Job>* WatchJob(grpc::CallbackServerContext* c,
                                                      const moex::v1::WatchJobRequest* r) override {
      auto* writer = new QueuedWriter<moex::v1::Job>();
      grpc::Status auth = Authorise(c, token);
      if (!auth.ok()) {
        writer->Close(auth);
        return writer;
      }
      if (!Admit(writer)) return writer;
      // Every distinct snapshot goes out; the stream ends after a terminal one.
      auto last = std::make_shared<std::string>();
      auto guard = std::make_shared<std::mutex>();
      auto alive = writer->alive;
      auto subscribed = jobs->Subscribe(r->id(), [writer, last, guard, alive](const moex::v1::Job& job) {
        std::lock_guard<std::mutex> lock(*guard);
        if (!alive->load()) return;
        std::string bytes = job.SerializeAsString();
        if (bytes == *last) return;
        *last = bytes;
        writer->Push(job);
        if (IsTerminal(job.state())) writer->Close(grpc::Status::OK);
      });
      if (!subscribed.ok()) {
        writer->Close(ToGrpc(subscribed.status()));
        return writer;
      }
      JobManager* manager = jobs;
      int64_t handle = *subscribed;
      writer->on_done = [manager, handle, guard, alive, open = open_streams] {
        open->fetch_sub(1);
        std::lock_guard<std::mutex> lock(*guard);
        alive->store(false);
        manager->Unsubscribe(handle);
      };
      return writer;
    }

    grpc::ServerWriteReactor<moex::v1::LogChunk>* GetJobLogs(grpc::CallbackServerContext* c,
                                                             const moex::v1::GetJobLogsRequest* r) override {
      auto* writer = new QueuedWriter<moex::v1::LogChunk>();
      grpc::Status auth = Authorise(c, token);
      if (!auth.ok()) {
        writer->Close(auth);
        return writer;
      }
      if (!Admit(writer)) return writer;
      auto path = jobs->LogPath(r->id());
      if (!path.ok()) {
        writer->Close(ToGrpc(path.status()));
        return writer;
      }
      // A reader thread per stream: it ends with the job (follow), at the end
      // of the file (no follow), when the client goes away, or when the
      // controller stops (which joins it). It touches the writer only under
      // `guard` while the stream is alive: OnDone takes the same lock first.
      auto guard = std::make_shared<std::mutex>();
      auto alive = writer->alive;
      writer->on_done = [open = open_streams, guard, alive] {
        open->fetch_sub(1);
        std::lock_guard<std::mutex> lock(*guard);
        alive->store(false);
      };
      auto send = [writer, guard, alive](moex::v1::LogChunk* chunk) {
        std::lock_guard<std::mutex> lock(*guard);
        if (!alive->load()) return;
        if (chunk != nullptr) {
          writer->Push(std::move(*chunk));
        } else {
          writer->Close(grpc::Status::OK);
        }
      };
      StartReader([send, alive, stopping = stopping, manager = jobs, id = r->id(), file = *path,
                   follow = r->follow()] {
        std::ifstream in(file, std::ios::binary);
        std::string buffer(64 * 1024, '\0');
        while (alive->load() && !stopping->load()) {
          in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
          std::streamsize got = in.gcount();
          if (got > 0) {
            moex::v1::LogChunk chunk;
            chunk.set_data(buffer.data(), static_cast<size_t>(got));
            send(&chunk);
            continue;
          }
          in.clear();
          bool ended = true;
          if (follow) {
            auto job = manager->Get(id);
            ended = !job.ok() || IsTerminal(job->state());
          }
          if (ended) {
            // One more read: lines written just before the end.
            in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
            if (in.gcount() > 0) {
              moex::v1::LogChunk chunk;
              chunk.set_data(buffer.data(), static_cast<size_t>(in.gcount()));
              send(&chunk);
            }
            break;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        send(nullptr);
      });
      return writer;
    }

    // Log reader threads: started here, reaped when done, joined when the
    // controller stops (they use the job manager).
    void StartReader(std::function<void()> body) {
      std::lock_guard<std::mutex> lock(readers_mutex);
      for (auto it = readers.begin(); it != readers.end();) {
        if (it->done->load()) {
          it->thread.join();
          it = readers.erase(it);
        } else {
          ++it;
        }
      }
      auto done = std::make_shared<std::atomic<bool>>(false);
      readers.push_back({std::thread([body = std::move(body), done] {
                           body();
                           done->store(true);
                         }),
                         done});
    }
    void JoinReaders() {
      stopping->store(true);
      std::vector<Reader> all;
      {
        std::lock_guard<std::mutex> lock(readers_mutex);
        all.swap(readers);
      }
      for (Reader& reader : all) reader.thread.join();
    }
    struct Reader {
      std::thread thread;
      std::shared_ptr<std::atomic<bool>> done;
    };
    std::mutex readers_mutex;
    std::vector<Reader> readers;
    std::shared_ptr<std::atomic<bool>> stopping = std::make_shared<std::atomic<bool>>(false);
  };

  struct Cluster final : moex::v1::ClusterService::CallbackService {
    JobManager* jobs;
    std::string token;
    grpc::ServerUnaryReactor* RegisterRank(grpc::CallbackServerContext* c, const moex::v1::RegisterRankRequest* r,
                                           moex::v1::RegisterRankResponse* out) override {
      return Answer(c, token, out, [&]() -> absl::StatusOr<moex::v1::RegisterRankResponse> {
        MOEX_RETURN_IF_ERROR(CheckRankSecret(c, *jobs, r->job_id(), "RegisterRank"));
        return jobs->RegisterRank(*r, CallerAttempt(c));
      });
    }
    grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* c, const moex::v1::HeartbeatRequest* r,
                                        moex::v1::HeartbeatResponse* out) override {
      return Answer(c, token, out, [&]() -> absl::StatusOr<moex::v1::HeartbeatResponse> {
        MOEX_RETURN_IF_ERROR(CheckRankSecret(c, *jobs, r->job_id(), "Heartbeat"));
        return jobs->Heartbeat(*r, CallerAttempt(c));
      });
    }
    grpc::ServerUnaryReactor* ReportStep(grpc::CallbackServerContext* c, const moex::v1::ReportStepRequest* r,
                                         moex::v1::ReportStepResponse* out) override {
      return Answer(c, token, out, [&]() -> absl::StatusOr<moex::v1::ReportStepResponse> {
        MOEX_RETURN_IF_ERROR(CheckRankSecret(c, *jobs, r->job_id(), "ReportStep"));
        return jobs->ReportStep(*r, CallerAttempt(c));
      });
    }
    grpc::ServerUnaryReactor* ReportFailure(grpc::CallbackServerContext* c, const moex::v1::ReportFailureRequest* r,
                                            moex::v1::ReportFailureResponse* out) override {
      return Answer(c, token, out, [&]() -> absl::StatusOr<moex::v1::ReportFailureResponse> {
        MOEX_RETURN_IF_ERROR(CheckRankSecret(c, *jobs, r->job_id(), "ReportFailure"));
        MOEX_RETURN_IF_ERROR(jobs->ReportFailure(*r, CallerAttempt(c)));
        return moex::v1::ReportFailureResponse();
      });
    }
  };

  struct Placements final : moex::v1::PlacementService::CallbackService {
    JobManager* jobs;
    std::string token;
    grpc::ServerUnaryReactor* GetPlacement(grpc::CallbackServerContext* c, const moex::v1::GetPlacementRequest* r,
                                           moex::v1::Placement* out) override {
      return Answer(c, token, out, [&] { return jobs->GetPlacement(r->job_id()); });
    }
    grpc::ServerUnaryReactor* Rebalance(grpc::CallbackServerContext* c, const moex::v1::RebalanceRequest* r,
                                        moex::v1::Placement* out) override {
      return Answer(c, token, out, [&] { return jobs->Rebalance(r->job_id(), r->policy()); });
    }
  };

  Jobs jobs;
  Cluster cluster;
  Placements placements;
};

namespace {

// Ranks on other hosts must be told an address they can reach.
absl::Status CheckAdvertise(const ControllerOptions& options) {
  const bool spans_hosts = options.launcher.kind == "slurm" || !options.launcher.hostfile.empty();
  if (!spans_hosts) return absl::OkStatus();
  const std::string& address = options.advertise.empty() ? options.listen : options.advertise;
  const bool has_port = !address.empty() && address.back() != ']' && address.find(':') != std::string::npos;
  const std::string host = has_port ? address.substr(0, address.rfind(':')) : address;
  if (host.empty() || host.rfind("127.", 0) == 0 || host == "localhost" || host == "0.0.0.0" || host == "[::]" ||
      host == "[::1]") {
    return absl::InvalidArgumentError(StrCat("ranks on other hosts cannot reach the controller at ", address,
                                             ": give --advertise HOST[:PORT], an address of this host they can reach"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Controller>> Controller::Start(ControllerOptions options) {
  auto controller = std::unique_ptr<Controller>(new Controller());
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state-dir is required");
  // Before anything is made or touched, the state dir included.
  MOEX_RETURN_IF_ERROR(CheckExposure(options));
  // One controller per state dir, and per address, decided before a job is
  // adopted or failed.
  MOEX_ASSIGN_OR_RETURN(controller->lock_, StateDirLock::Acquire(options.state_dir));
  MOEX_RETURN_IF_ERROR(CheckAddressFree(options.listen));
  // Checked before any job is adopted: a refused start must not stop them.
  MOEX_RETURN_IF_ERROR(CheckAdvertise(options));
  // Metrics are bound before any job is adopted too; they answer with the
  // process's figures alone until the job manager is attached.
  const std::string metrics_listen = options.metrics_listen;
  auto calls = std::make_shared<CallCounter>();
  std::shared_ptr<ControllerCollector> collector;
  if (!metrics_listen.empty()) {
    collector = std::make_shared<ControllerCollector>(calls);
    MOEX_ASSIGN_OR_RETURN(controller->metrics_, MetricsEndpoint::Start(metrics_listen, "--metrics-listen", collector));
  }
  std::string listen = options.listen;
  std::string token = options.token;
  auto credentials = ServerCredentials({options.tls_client_ca, options.tls_cert, options.tls_key});
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::unique_ptr<JobManager>> jobs = JobManager::Create(std::move(options));
  if (!jobs.ok()) return jobs.status();
  controller->jobs_ = std::move(*jobs);
  controller->services_ = std::make_unique<Services>();
  controller->services_->jobs.jobs = controller->jobs_.get();
  controller->services_->jobs.token = token;
  controller->services_->jobs.max_streams = controller->jobs_->options().max_streams;
  controller->services_->cluster.jobs = controller->jobs_.get();
  controller->services_->cluster.token = token;
  controller->services_->placements.jobs = controller->jobs_.get();
  controller->services_->placements.token = token;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second controller on this port would
  // listen too, and clients would be split between the two.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    if (!metrics_listen.empty()) interceptors.push_back(std::make_unique<CallCountingFactory>(calls));
    if (!token.empty()) interceptors.push_back(std::make_unique<TokenInterceptorFactory>(token));
    if (!interceptors.empty()) builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  builder.AddListeningPort(listen, *credentials, &controller->port_);
  builder.RegisterService(&controller->services_->jobs);
  builder.RegisterService(&controller->services_->cluster);
  builder.RegisterService(&controller->services_->placements);
  builder.SetMaxReceiveMessageSize(4 << 20);
  controller->server_ = builder.BuildAndStart();
  if (controller->server_ == nullptr || controller->port_ == 0) {
    MOEX_RETURN_IF_ERROR(CheckAddressFree(listen));  // taken since the first check
    return absl::UnavailableError(StrCat("cannot listen on ", listen, " (not an address of this host?)"));
  }
  // Ranks reach the controller on the port it really got (":0" picks one).
  std::string host = listen.substr(0, listen.rfind(':'));
  std::string advertise = controller->jobs_->options().advertise;
  if (advertise.empty()) {
    advertise = StrCat(host, ":", controller->port_);
  } else if (advertise.back() == ']' || advertise.find(':') == std::string::npos) {
    advertise = StrCat(advertise, ":", controller->port_);  // --advertise HOST: the port it listens on
  } else if (absl::EndsWith(advertise, ":0")) {
    advertise = StrCat(advertise.substr(0, advertise.size() - 2), ":", controller->port_);
  }
  controller->jobs_->SetAdvertisedAddress(advertise);
  if (collector) collector->Attach(controller->jobs_.get(), controller->services_->jobs.open_streams);
  controller->watcher_ = std::thread([c = controller.get()] { c->WatchStateDir(); });
  return controller;
}

void Controller::WatchStateDir() {
  bool serving = true;
  std::unique_lock<std::mutex> lock(watch_mutex_);
  while (!watch_wake_.wait_for(lock, std::chrono::seconds(1), [this] { return watch_stop_; })) {
    const absl::Status state_dir = jobs_->CheckStateDir();
    if (state_dir.ok() == serving) continue;
    serving = state_dir.ok();
    server_->GetHealthCheckService()->SetServingStatus(serving);
    if (serving) {
      log::Info("the state dir is back; SERVING again");
    } else {
      log::Error("NOT_SERVING, submissions refused", {{"why", std::string(state_dir.message())}});
    }
  }
}

Controller::~Controller() { Shutdown(); }

std::string Controller::metrics_address() const { return metrics_ ? metrics_->address() : ""; }

void Controller::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(watch_mutex_);
    watch_stop_ = true;
  }
  watch_wake_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  if (jobs_) jobs_->Shutdown();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (services_) services_->jobs.JoinReaders();
}

}  // namespace moex::cluster
