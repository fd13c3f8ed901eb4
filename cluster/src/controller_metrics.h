// The controller's side of --metrics-listen (metrics.h): gRPC calls counted
// by an interceptor, and a collector that reads the job manager when
// Prometheus scrapes. Private to the cluster layer (server.cc wires them).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "grpcpp/support/server_interceptor.h"
#include "moex/cluster/job_manager.h"
#include "prometheus/collectable.h"

namespace moex::cluster {

// gRPC calls handled, by service, method and status code (the names of
// go-grpc-prometheus: grpc_server_handled_total). Methods past the first 64
// distinct ones are counted as "other": a client's made-up method names
// must not grow the series without bound.
class CallCounter {
 public:
  void Count(const std::string& full_method, int code);
  // (service, method, code name) -> calls.
  std::map<std::tuple<std::string, std::string, std::string>, int64_t> Snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, std::string>, int64_t> calls_;
  std::map<std::string, std::pair<std::string, std::string>> methods_;  // full name -> (service, method)
};

// Counts each call's status as it is sent.
class CallCountingFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallCountingFactory(std::shared_ptr<CallCounter> counter) : counter_(std::move(counter)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  std::shared_ptr<CallCounter> counter_;
};

class ControllerCollector final : public prometheus::Collectable {
 public:
  explicit ControllerCollector(std::shared_ptr<CallCounter> calls) : calls_(std::move(calls)) {}
  // The jobs to read from now on (before: the process's figures only).
  void Attach(JobManager* jobs, std::shared_ptr<std::atomic<int>> open_streams);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::vector<prometheus::MetricFamily> Build() const;
  std::shared_ptr<CallCounter> calls_;
  mutable std::mutex mutex_;
  JobManager* jobs_ = nullptr;
  std::shared_ptr<std::atomic<int>> open_streams_;
};

}  // namespace moex::cluster
