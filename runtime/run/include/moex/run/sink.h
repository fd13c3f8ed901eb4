// Where a run's progress and results go. The run loop (runner.h) calls
// every sink it was given, on every rank, in order; a sink that only
// speaks for the job (the terminal, the JSON file) is given to rank 0 only.
// Sinks: TerminalSink and JsonSink here; the controller's report in
// cluster (a controller-launched job's ranks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "moex/balance/live_rebalancer.h"
#include "moex/job/run_config.h"
#include "moex/kernels/blas_binding.h"
#include "moex/model/moe_layer_spec.h"
#include "moex/placement/placement.h"
#include "moex/run/step_summary.h"
#include "nlohmann/json.hpp"

namespace moex::run {

// What is known before the first step.
struct RunHeader {
  const job::RunConfig* config = nullptr;
  const model::MoeLayerSpec* spec = nullptr;
  const placement::Placement* placement = nullptr;  // the one the run starts on
  std::string model_source;    // the config's path or preset
  std::string transport;       // the host transport's name
  std::string device_path;     // "NCCL 2.28.3 on NVIDIA H200 (device 0)" on the GPU path, else ""
  std::string weights_line;    // where the weights came from, ending in a newline
  std::string data_path_reason;  // how tokens move and why ("shared memory: 4 ranks on one host …")
  int world_size = 0;
  int64_t tokens_per_step = 0;
  int64_t first_step = 0;      // > 0: a relaunch resuming
  bool rebalancing = false;    // a live rebalancer runs
  // This rank's BLAS threads against the CPUs it is bound to (the CPU
  // path; rank 0's is what the sinks report).
  kernels::BlasBinding blas;
};

// Where the run stands after a step (or at its end).
struct RunProgress {
  int64_t steps_done = 0;
  const std::vector<StepSummary>* steps = nullptr;  // every step this run ran, in order
  int64_t placement_version = 1;
  double check_error = -1;     // the last --check, or -1
  int64_t experts_from_cache = 0, experts_loaded = 0;  // over all ranks
  bool final = false;          // the last report of the run
};

// The run's end, on success.
struct RunResult {
  std::string data_path;       // how tokens moved
  int hosts = 0;               // distinct hosts of the ranks (0: unknown)
  RunProgress progress;
  std::vector<balance::RebalanceEvent> rebalances;
  std::string expert_dtype;      // the routed experts' stored dtype ("fp8", ...)
  bool experts_mapped = false;   // used in place from a read-only mapping of the checkpoint
  std::vector<int64_t> expert_bytes_per_rank;          // routed experts held, by rank
  std::vector<int64_t> peak_resident_bytes_per_rank;   // VmHWM after the last step (before --check), by rank
};

class RunSink {
 public:
  virtual ~RunSink() = default;
  virtual void OnStart(const RunHeader&) {}
  // A placement change: decided (`live` false) or gone live.
  virtual void OnRebalance(int64_t /*step*/, const balance::RebalanceEvent&, bool /*live*/) {}
  virtual void OnStep(const StepSummary&, const RunProgress&) {}
  // Rank 0, the last step's whole output written to --output.
  virtual void OnOutputWritten(const std::string& /*path*/, const std::vector<int64_t>& /*shape*/) {}
  // Rank 0, --check's result.
  virtual void OnCheck(double /*error*/, double /*bound*/) {}
  // After the last step; an error fails the run (a file that cannot be
  // written).
  virtual absl::Status OnFinish(const RunResult&) { return absl::OkStatus(); }
};

// `moex run`'s lines on stdout; `quiet` keeps the summary, rebalances and
// the check. Warnings (more BLAS threads than bound CPUs) go to stderr,
// one line each, also with `quiet`.
class TerminalSink final : public RunSink {
 public:
  explicit TerminalSink(bool quiet) : quiet_(quiet) {}
  void OnStart(const RunHeader& header) override;
  void OnRebalance(int64_t step, const balance::RebalanceEvent& event, bool live) override;
  void OnStep(const StepSummary& summary, const RunProgress& progress) override;
  void OnOutputWritten(const std::string& path, const std::vector<int64_t>& shape) override;
  void OnCheck(double error, double bound) override;
  absl::Status OnFinish(const RunResult& result) override;

 private:
  bool quiet_;
  int64_t steps_ = 0;
  bool rebalancing_ = false;
  bool gpu_ = false;
  int64_t hidden_ = 0;
  bool fp8_dispatch_ = false;  // --dispatch-dtype fp8
};

// --json: the per-step figures and the summary, written atomically at the end.
class JsonSink final : public RunSink {
 public:
  explicit JsonSink(std::string path) : path_(std::move(path)) {}
  void OnStart(const RunHeader& header) override;
  absl::Status OnFinish(const RunResult& result) override;

 private:
  std::string path_;
  nlohmann::json head_;
  bool check_ = false;
};

}  // namespace moex::run
