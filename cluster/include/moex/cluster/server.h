// `moex serve`: the controller as a gRPC server. JobService, ClusterService
// and PlacementService on the callback API, grpc.health.v1.Health and server
// reflection enabled. Handlers are thin: translate, call the JobManager, map
// the status.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "moex/cluster/job_manager.h"

namespace grpc {
class Server;
}

namespace moex::cluster {

class Controller {
 public:
  static absl::StatusOr<std::unique_ptr<Controller>> Start(ControllerOptions options);
  ~Controller();
  int port() const { return port_; }
  JobManager& jobs() { return *jobs_; }
  // Stops accepting calls, ends running jobs (FAILED, saying why), returns.
  void Shutdown();

  struct Services;

 private:
  Controller() = default;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace moex::cluster
