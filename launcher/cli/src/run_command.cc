#include "moex/cli/run_command.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <memory>
#include <new>
#include <optional>
#include <vector>

#include "moex/cli/bench_command.h"
#include "moex/cli/flag_checks.h"
#include "moex/cluster/job_spec.h"
#include "moex/core/log.h"
#include "moex/core/stop.h"
#include "moex/core/str_cat.h"
#include "moex/kernels/expert_ffn.h"
#include "moex/launcher/host_cleanup.h"
#include "moex/model/hf_cache.h"
#include "moex/run/runner.h"
#include "moex/run/sink.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport.h"
#include "moex/transport/shared_segments.h"
#include "moex/transport/transport_registry.h"
#include "moex/cluster/metrics.h"
#include "moex/worker/bench_job.h"
#include "moex/worker/run_metrics.h"
#include "moex/worker/worker_run_link.h"
#include "moex/worker/worker_session.h"

namespace moex::cli {

CLI::App* AddRunCommand(CLI::App& app, RunFlags& flags) {
  job::RunConfig& f = flags.config;
  CLI::App* run = app.add_subcommand(
      "run", "Run one MoE layer expert-parallel across the ranks of an mpirun job");
  run->add_option("--model,-m", f.model,
                  "Preset name, a config.json, a folder holding one, or a Hugging Face id (org/name) in the local "
                  "Hugging Face cache")->capture_default_str();
  run->add_option("--layer", f.layer, "Layer index (default: the first MoE layer)");
  run->add_option("--weights", f.weights,
                  "A .safetensors file, a model.safetensors.index.json, or a folder (default: random from --seed)");
  run->add_option("--weight-dtype", f.weight_dtype,
                  "Random experts are made and held in this dtype: f32, bf16, f16, fp8 (128x128 block scales) or "
                  "mxfp4; a checkpoint's experts keep the dtype they are stored in")
      ->capture_default_str();
  run->add_option_function<std::string>(
         "--load",
         [&f](const std::string& mode) {
           if (mode != "map" && mode != "copy") throw CLI::ValidationError("--load", "must be map or copy");
           f.map_weights = mode == "map";
         },
         "map: a checkpoint's experts are used in place from a read-only mapping (one copy a host, in the page "
         "cache); copy: read into each rank")
      ->default_str("map");
  run->add_option("--save-weights", f.save_weights, "Rank 0 writes the whole layer's weights here (safetensors)");
  run->add_option("--weight-cache", f.weight_cache,
                  "A directory on each host (e.g. under /dev/shm) where ranks keep the weights they load; a relaunch "
                  "reads them back and loads only what is missing");
  run->add_option("--input", f.input, "safetensors file with `hidden_states` [tokens, hidden] (fp32 or bf16)");
  run->add_option("--output", f.output, "Rank 0 writes `output` [tokens, hidden] fp32 here");
  run->add_option("--tokens-per-rank", f.tokens_per_rank, "Synthetic tokens per rank per step")->capture_default_str();
  run->add_option("--steps", f.steps, "Forward passes")->capture_default_str();
  run->add_option("--transport", f.transport,
                  "mpi, ucx, or nccl (device buffers; needs --device cuda; counts go over MPI)")->capture_default_str();
  run->add_option("--dispatch", f.dispatch,
                  "Across hosts: hierarchical (a token crosses to a host once, forwarded there through shared "
                  "memory), flat (to each rank), or auto (hierarchical when ranks span hosts)")->capture_default_str();
  run->add_option("--dispatch-dtype", f.dispatch_dtype,
                  "How token rows cross between hosts: fp32, or fp8 (e4m3, a scale per 128 values, as DeepEP; the "
                  "routed experts then see every row as its fp8 form reads back, on every rank)")
      ->capture_default_str();
  run->add_option("--device", f.device, "cpu, or cuda: the layer on GPUs (bf16), one GPU a rank")->capture_default_str();
  run->add_option("--routing-skew", f.routing_skew, "Zipf exponent of synthetic routing (0: uniform)")->capture_default_str();
  run->add_option("--seed", f.seed, "Seed of random weights and synthetic tokens")->check(Unsigned64())->capture_default_str();
  run->add_option("--redundant-experts", f.redundant_experts, "Extra replicas of experts")->capture_default_str();
  run->add_flag("--check", f.check, "Compare the output of the last step with a single-process computation");
  run->add_flag("--check-every-step", f.check_every_step, "Compare every step's output (slow on big layers)");
  run->add_option("--rebalance-threshold", f.rebalance.threshold,
                  "Move experts when the window's max/mean rank load exceeds this (0: off)")->capture_default_str();
  run->add_option("--rebalance-interval", f.rebalance.interval, "At least this many steps between placement changes")->capture_default_str();
  run->add_option("--rebalance-window", f.rebalance.window, "Steps of load a decision looks at")->capture_default_str();
  run->add_option("--rebalance-policy", f.rebalance.policy, "refined (EPLB refined by local search) or eplb; moex: refined")->capture_default_str();
  run->add_option("--rebalance-at-step", f.rebalance.at_step, "Also rebalance before this step (0-based)");
  run->add_option("--migration-chunk-mb", f.rebalance.migration_chunk_mb, "Expert weights moved per step, all ranks together")->capture_default_str();
  run->add_option("--timeout", f.timeout_seconds, "Seconds any one exchange may wait for peers")->capture_default_str();
  run->add_option("--json", f.json, "Rank 0 writes the per-step figures and summary here");
  run->add_option("--log-format", flags.log_format, "Errors on stderr as text or json (one event a line)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  run->add_option("--metrics-listen", flags.metrics_listen,
                  "Rank 0 serves Prometheus metrics at http://HOST:PORT/metrics while the run runs (docs/metrics.md)");
  run->add_flag("--quiet", f.quiet, "Print only the summary");
  return run;
}

CLI::App* AddWorkerCommand(CLI::App& app, RunFlags& f) {
  CLI::App* worker = app.add_subcommand(
      "worker", "A rank of a job launched by `moex serve` (the controller starts these under mpirun)");
  worker->add_option("--job-id", f.job_id, "The job this rank belongs to")->required();
  worker->add_option("--controller", f.controller, "The controller's address (required for a rank)");
  worker->add_option("--attempt", f.attempt, "Which launch of the job this is (1: the first)")
      ->check(CLI::Range(0, 1000000));
  worker->add_flag("--cleanup", f.cleanup,
                   "Instead of running a rank, remove what the job (or, with --attempt, that attempt) left on "
                   "this host: its shared-memory segments, weight cache and record directory");
  worker->add_option("--weight-cache-root", f.weight_cache_root,
                     "With --cleanup: the controller's --weight-cache-root (\"\": no cache)");
  worker->add_option("--shm-dir", f.shm_dir, "With --cleanup: where the job's ranks made their segments")
      ->capture_default_str();
  return worker;
}

namespace {

// One line a failure: the ranks of one launch on one host that fail with
// the same message say it once. The first to bind an abstract Unix socket
// named by the launch (PMIX_NAMESPACE, which mpirun and srun --mpi=pmix
// give every rank) and the message's hash says it; the name goes when the
// process exits, so nothing is left behind. Outside such a launch, or when
// the socket cannot be made, every rank says it.
bool FirstToSay(std::string_view message) {
  const char* launch = std::getenv("PMIX_NAMESPACE");
  if (launch == nullptr || launch[0] == '\0') return true;
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return true;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const std::string name = StrCat("moex-said-", getuid(), "-", std::hash<std::string_view>{}(launch), "-",
                                  std::hash<std::string_view>{}(message));
  const size_t length = std::min(name.size(), sizeof(address.sun_path) - 1);
  std::memcpy(address.sun_path + 1, name.data(), length);  // sun_path[0] == 0: the abstract namespace
  const socklen_t size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + length);
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), size) == 0) return true;  // held until exit
  const bool other_said_it = errno == EADDRINUSE;
  close(fd);
  return !other_said_it;
}

// A rank of a controller job records, on its host, the files in /dev/shm
// that a kill would leave: Open MPI's segments (mapped by now) and every
// moex segment before it is made. The host's cleanup removes them.
class LeftoverRecorder {
 public:
  LeftoverRecorder(const RunFlags& flags, int rank) {
    absl::StatusOr<launcher::RankRecord> opened =
        launcher::RankRecord::Open(flags.shm_dir, flags.job_id, flags.attempt, rank);
    absl::Status status = opened.status();
    if (opened.ok()) {
      auto record = std::make_shared<launcher::RankRecord>(std::move(*opened));
      for (const std::string& path : launcher::MappedMpiSegments(flags.shm_dir)) {
        if (status.ok()) status = record->Add(path);
      }
      transport::SetSegmentCreationObserver([record, rank](const std::string& path) {
        if (absl::Status added = record->Add(path); !added.ok()) Warn(rank, added);
      });
      installed_ = true;
    }
    if (!status.ok()) Warn(rank, status);
  }
  ~LeftoverRecorder() {
    if (installed_) transport::SetSegmentCreationObserver(nullptr);
  }
  LeftoverRecorder(const LeftoverRecorder&) = delete;
  LeftoverRecorder& operator=(const LeftoverRecorder&) = delete;

 private:
  static void Warn(int rank, const absl::Status& status) {
    const std::string line = StrCat("moex worker: rank ", rank, ": warning: ", status.message(),
                                    "; what this rank leaves in shared memory may outlive the job\n");
    (void)!write(STDERR_FILENO, line.data(), line.size());
  }
  bool installed_ = false;
};

int RunHostCleanup(const RunFlags& flags) {
  launcher::HostCleanupRequest request;
  request.job_id = flags.job_id;
  request.attempt = flags.attempt;
  request.weight_cache_root = flags.weight_cache_root;
  request.shm_dir = flags.shm_dir;
  absl::StatusOr<launcher::HostCleanupReport> report = launcher::CleanJobOnHost(request);
  if (!report.ok()) {
    std::cerr << "moex worker --cleanup: error: " << report.status().message() << "\n";
    return 2;
  }
  // One line a host: the launcher that ran this step on every host reads them back.
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::cout << "moex worker --cleanup: " << (host[0] != '\0' ? host : "?") << ": job " << flags.job_id << ": "
            << report->Summary() << std::endl;
  return report->ok() ? 0 : 1;
}

}  // namespace

int RunWorker(const RunFlags& flags, int* argc, char*** argv) {
  if (flags.cleanup) return RunHostCleanup(flags);
  if (flags.controller.empty()) {
    std::cerr << "moex worker: error: --controller is required (unless --cleanup)\n";
    return 2;
  }
  return RunRun(flags, argc, argv);
}

absl::StatusOr<std::unique_ptr<transport::Transport>> CreateRankTransport(const std::string& name) {
  return transport::CreateTransport(name);
}

int RunRun(const RunFlags& flags, int* argc, char*** argv) {
  job::RunConfig config = flags.config;
  (void)log::Configure(flags.log_format, "run");  // checked by the flag
  absl::StatusOr<std::unique_ptr<transport::MpiSession>> mpi = transport::MpiSession::Start(argc, argv);
  // SIGTERM from the launcher (a lost peer or host, a cancel) ends a wait
  // with what it waited for, rather than the rank silently.
  InstallStopHandler();
  if (!mpi.ok()) {
    std::cerr << "moex run: error: " << mpi.status().message() << "\n";
    return 1;
  }
  const int rank = (*mpi)->rank();
  std::optional<LeftoverRecorder> leftovers;
  if (!flags.job_id.empty()) leftovers.emplace(flags, rank);
  std::unique_ptr<worker::WorkerSession> worker;
  auto fail = [&](const absl::Status& status) -> int {
    // One line a failure, however many ranks failed the same way; one
    // write per line, so that mpirun does not interleave ranks mid-line.
    // Text keeps the form the controller reads from a job's log.
    if (const std::string message(status.message()); FirstToSay(message)) {
      if (flags.log_format == "json") {
        log::Error(message, {{"rank", std::to_string(rank)}, {"code", absl::StatusCodeToString(status.code())}});
      } else {
        std::string line = StrCat("moex run: rank ", rank, ": error: ", status.message(), "\n");
        (void)!write(STDERR_FILENO, line.data(), line.size());
      }
    }
    // A controller's rank says why as data (the ranks it waited for, a bad
    // input), so that the controller need not read it from the log.
    if (worker) worker->ReportFailure(status, transport::MissingRanks(status), StopSignal() != 0);
    // Every rank that can still speak says why; then the whole job ends.
    // Stopped by the launcher (a cancel, a lost host): at once, it is
    // ending the job anyway.
    (*mpi)->Abort(1, StopSignal() != 0 ? 0.0 : 2.0);
  };
  // Ranks share the machine's cores; one BLAS thread each unless told.
  const char* threads = std::getenv("MOEX_BLAS_THREADS");
  kernels::SetBlasThreads(threads != nullptr ? std::max(1, std::atoi(threads)) : 1);

  // A worker takes its config from the controller's JobSpec.
  std::unique_ptr<worker::WorkerRunLink> link;
  if (!flags.job_id.empty()) {
    // Test hook: MOEX_FAULT_UNREACHABLE_RANK=r gives rank r an address where
    // no controller listens.
    const char* unreachable = std::getenv("MOEX_FAULT_UNREACHABLE_RANK");
    std::string controller = flags.controller;
    if (unreachable != nullptr && std::atoi(unreachable) == rank) controller = "127.0.0.1:1";
    auto registered = worker::WorkerSession::Register(controller, flags.job_id, rank, (*mpi)->world_size(), flags.attempt);
    if (!registered.ok()) return fail(registered.status());
    worker = std::move(*registered);
    config = cluster::RunConfigFromSpec(worker->spec());
    // The controller decides placements from the reported load; the ranks
    // take the ones it publishes.
    config.rebalance.threshold = 0;
    config.first_step = worker->first_step();
    config.weight_cache = worker->weight_cache_dir();
    link = std::make_unique<worker::WorkerRunLink>(*worker, rank);
  } else {
    // --model org/name: the snapshot in the local Hugging Face cache, which
    // every rank finds for itself. (A controller's job names files only.)
    absl::StatusOr<std::string> resolved = model::ResolveModel(config.model);
    if (!resolved.ok()) return fail(resolved.status());
    config.model = *resolved;
  }

  // Checked before any transport or GPU is touched, so the message is the
  // same on every build and machine.
  // A controller job's errors name the spec's fields.
  const job::FieldNames names = worker ? job::FieldNames::kJobSpec : job::FieldNames::kFlags;
  const bool bench_job = worker && worker->spec().has_bench();
  if (!bench_job) {
    if (absl::Status valid = config.Validate(names); !valid.ok()) return fail(valid);
  }
  absl::StatusOr<std::unique_ptr<transport::Transport>> transport = CreateRankTransport(config.transport);
  if (!transport.ok()) return fail(transport.status());
  if (bench_job) {
    absl::Status benched = worker::RunBenchJob(*worker, **transport);
    if (!benched.ok()) return fail(benched);
    transport->reset();
    worker->Finished();
    return 0;
  }
  // The job's own figures are printed (and written) by rank 0.
  std::vector<run::RunSink*> sinks;
  run::TerminalSink terminal(config.quiet);
  std::optional<run::JsonSink> json;
  std::shared_ptr<worker::RunMetrics> metrics;
  std::unique_ptr<cluster::MetricsEndpoint> metrics_endpoint;
  if (rank == 0) {
    sinks.push_back(&terminal);
    if (!config.json.empty()) sinks.push_back(&json.emplace(config.json));
    if (!flags.metrics_listen.empty() && !worker) {
      metrics = std::make_shared<worker::RunMetrics>("run");
      absl::StatusOr<std::unique_ptr<cluster::MetricsEndpoint>> served = worker::ServeRunMetrics(flags.metrics_listen, metrics);
      if (!served.ok()) return fail(served.status());
      metrics_endpoint = std::move(*served);
      std::cout << "moex run: metrics at http://" << metrics_endpoint->address() << "/metrics" << std::endl;
      sinks.push_back(metrics.get());
    }
  }
  if (link) sinks.push_back(link.get());
  absl::Status status;
  try {
    status = run::RunLayer(config, **transport, sinks, link.get());
  } catch (const std::bad_alloc&) {
    // The memory check before loading estimates; what it missed ends here,
    // said in one line, rather than in an abort and a backtrace.
    status = absl::ResourceExhaustedError(
        "out of memory (an allocation failed after the memory check before loading had passed: its estimate was "
        "short); give the ranks more memory (ulimit -v, the cgroup) or spread the experts over more ranks");
  }
  if (absl::IsCancelled(status) && worker) {
    // Every rank agreed on it at the same step: a clean stop, not a failure.
    const std::string line = StrCat("moex worker: rank ", rank, ": ", status.message(), "\n");
    (void)!write(STDERR_FILENO, line.data(), line.size());
    transport->reset();
    worker->Finished();
    return 0;
  }
  if (!status.ok()) return fail(status);
  transport->reset();
  if (worker) worker->Finished();
  return 0;
}

}  // namespace moex::cli
