// A rank of a controller-launched job: registers with the controller (and
// gets the job's spec), sends a heartbeat every second from a thread of its
// own (so a stopped or hung rank goes silent and the controller notices),
// and reports the job's figures after each step (rank 0).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/placement/placement.h"
#include "moex/v1/cluster.grpc.pb.h"
#include "moex/v1/job.pb.h"
#include "moex/v1/placement.grpc.pb.h"

namespace moex::worker {

class WorkerSession {
 public:
  // Every call has a deadline and names `attempt` (the launch this rank is
  // of, `--attempt`; 0: unsaid); registration retries until `connect_seconds`.
  static absl::StatusOr<std::unique_ptr<WorkerSession>> Register(const std::string& controller,
                                                                const std::string& job_id, int rank,
                                                                int world_size, int attempt,
                                                                double connect_seconds = 30);
  ~WorkerSession();
  // This rank finished its part cleanly: heartbeats stop, and the controller
  // is told that the silence is an exit, not a hang (the other ranks may
  // still be finishing, e.g. rank 0's check).
  void Finished();

  const moex::v1::JobSpec& spec() const { return spec_; }
  // Steps an earlier attempt of the job completed: resume after them.
  int64_t first_step() const { return first_step_; }
  // Where this host keeps loaded weights for a relaunch ("": nowhere).
  const std::string& weight_cache_dir() const { return weight_cache_dir_; }
  void SetStep(int64_t step) { step_.store(step); }
  // `bench`: a bench job's points so far (the whole list each time).
  // `final`: the job's last report; it is retried for up to a minute, so
  // that a controller restarting as the job ends still learns how it ended.
  absl::Status ReportStep(int64_t step, const moex::v1::JobMetrics& metrics,
                          const std::vector<int64_t>& tokens_per_expert = {}, bool final = false,
                          const std::vector<moex::v1::BenchPointResult>& bench = {});
  // The job's placement from the controller.
  absl::StatusOr<placement::Placement> FetchPlacement();
  // The newest placement version the controller has published (from the
  // heartbeats).
  int64_t placement_version() const { return placement_version_.load(); }
  // True once the controller has asked the job to stop, or refused a
  // heartbeat because the job or this attempt has ended.
  bool cancelled() const { return cancelled_.load(); }

 private:
  WorkerSession() = default;
  void HeartbeatLoop();

  std::unique_ptr<moex::v1::ClusterService::Stub> stub_;
  std::unique_ptr<moex::v1::PlacementService::Stub> placements_;
  std::string job_id_;
  std::string token_;
  int rank_ = 0;
  int attempt_ = 0;
  moex::v1::JobSpec spec_;
  int64_t first_step_ = 0;
  std::string weight_cache_dir_;
  int heartbeat_interval_ms_ = 1000;
  std::atomic<int64_t> step_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> placement_version_{1};
  std::thread heartbeat_;
};

}  // namespace moex::worker
