// `moex serve`: the controller as a gRPC server. JobService, ClusterService
// and PlacementService on the callback API, grpc.health.v1.Health and server
// reflection enabled; with a token, every call but health's must carry it,
// reflection's included. Handlers are thin: translate, call the JobManager,
// map the status.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "moex/cluster/job_manager.h"
#include "moex/cluster/state_dir.h"

namespace grpc {
class Server;
}

namespace moex::cluster {

class MetricsEndpoint;

class Controller {
 public:
  // Refuses (before touching any job) a state dir another controller holds
  // and an address in use; and, before touching anything, an address other
  // hosts can reach with neither a token nor mutual TLS, unless
  // options.insecure. While the state dir is not the one it opened
  // (deleted, replaced), the health service answers NOT_SERVING.
  static absl::StatusOr<std::unique_ptr<Controller>> Start(ControllerOptions options);
  ~Controller();
  int port() const { return port_; }
  // Where Prometheus scrapes it (HOST:PORT), "" without --metrics-listen.
  std::string metrics_address() const;
  JobManager& jobs() { return *jobs_; }
  // Stops accepting calls, ends running jobs (FAILED, saying why), returns.
  void Shutdown();

  struct Services;

 private:
  Controller() = default;
  // Once a second: the state dir's identity decides the health status.
  void WatchStateDir();
  std::unique_ptr<StateDirLock> lock_;  // first in, last out: held while anything else runs
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::mutex watch_mutex_;
  std::condition_variable watch_wake_;
  bool watch_stop_ = false;
  std::thread watcher_;
  std::unique_ptr<MetricsEndpoint> metrics_;  // last: stops serving before the rest goes
};

}  // namespace moex::cluster
