// A rank of a controller-launched job: registers with the controller (and
// gets the job's spec), sends a heartbeat every second from a thread of its
// own (so a stopped or hung rank goes silent and the controller notices),
// and reports the job's figures after each step (rank 0).
#pragma once

#include <grpcpp/support/status.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/placement/placement.h"
#include "moex/v1/cluster.grpc.pb.h"
#include "moex/v1/job.pb.h"
#include "moex/v1/placement.grpc.pb.h"

namespace moex::worker {

// What a rank's failure says about its cause: a peer's (it was waiting for
// ranks, or the launcher stopped it), its input's (BAD_INPUT: a config, a
// checkpoint, a spec field; retrying cannot help), memory, or its own error.
moex::v1::EndReason FailureReasonOf(const absl::Status& status, bool waiting_for_others, bool stopped);

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
  // A report that is not `final` is handed to a thread of its own and the
  // call returns at once: the step loop never waits for the controller.
  // Only the newest report is kept while one is in flight; while the
  // controller cannot be reached the thread backs off (0.2 s to 2 s) and says
  // so once on stderr, and once more when it is back.
  // `final`: the job's last report, sent from the caller's thread after
  // anything pending; it is retried for up to a minute, so that a controller
  // restarting as the job ends still learns how it ended.
  absl::Status ReportStep(int64_t step, const moex::v1::JobMetrics& metrics,
                          const std::vector<int64_t>& tokens_per_expert = {}, bool final = false,
                          const std::vector<moex::v1::BenchPointResult>& bench = {});
  // This rank failed with `status`: tells the controller why, within about
  // a second (best effort: the launcher's exit still ends the attempt).
  // `waiting_for`: the ranks it was waiting for (transport::MissingRanks);
  // `stopped`: the launcher stopped it (a signal), so it is not the cause.
  void ReportFailure(const absl::Status& status, const std::vector<int>& waiting_for, bool stopped);
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
  void ReportLoop();
  // One ReportStep call (under send_mutex_), `seconds` its deadline;
  // `unless_final`: skipped once the final report has gone.
  grpc::Status SendReport(const moex::v1::ReportStepRequest& request, double seconds, bool unless_final);

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
  // The report thread: the newest report not yet sent, and whether the
  // controller was unreachable at the last try (said once a spell).
  std::mutex report_mutex_;
  std::condition_variable report_ready_;
  std::optional<moex::v1::ReportStepRequest> pending_report_;
  bool final_report_ = false;  // sent or being sent: no report goes after it
  std::mutex send_mutex_;
  bool unreachable_said_ = false;
  std::thread reporter_;
};

}  // namespace moex::worker
