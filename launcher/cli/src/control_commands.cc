#include "moex/cli/control_commands.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <tuple>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/cli/flag_checks.h"
#include "moex/cli/job_printing.h"
#include "moex/cluster/credentials.h"
#include "moex/core/status_macros.h"
#include "moex/cluster/server.h"
#include "moex/core/log.h"
#include "moex/launcher/launcher.h"
#include "moex/model/presets.h"
#include "moex/core/str_cat.h"
#include "moex/v1/job.grpc.pb.h"
#include "moex/v1/placement.grpc.pb.h"

namespace moex::cli {
namespace {

// What to say of a call that found no controller (UNAVAILABLE). gRPC's
// message tells apart a port nobody listens on ("Connection refused"), a
// TLS handshake that failed (a CA that did not sign the controller's
// certificate, TLS to a plaintext controller), and a connection the other
// side closed at once (plaintext to a TLS controller, or no client
// certificate for one that demands it): only the first is "no controller".
std::string UnavailableMessage(const std::string& controller, const std::string& detail, bool tls) {
  // Matched without the address itself, which may hold any of the words.
  std::string lower = absl::AsciiStrToLower(detail);
  const std::string address = absl::AsciiStrToLower(controller);
  for (size_t at; !address.empty() && (at = lower.find(address)) != std::string::npos;) lower.erase(at, address.size());
  if (absl::StrContains(lower, "connection refused")) return StrCat("no controller at ", controller, " (", detail, ")");
  if (absl::StrContains(lower, "handshake") || absl::StrContains(lower, "ssl") || absl::StrContains(lower, "tls")) {
    return StrCat("the TLS handshake with ", controller, " failed (", detail, "): ",
                  tls ? "is --tls-ca (MOEX_TLS_CA) the CA that signed the controller's certificate, and does the "
                        "controller serve TLS at all?"
                      : "the controller there serves TLS; give --tls-ca (MOEX_TLS_CA)");
  }
  if (absl::StrContains(lower, "socket closed") || absl::StrContains(lower, "connection reset") ||
      absl::StrContains(lower, "end of tcp stream") || absl::StrContains(lower, "connection closed")) {
    return StrCat("the connection to ", controller, " failed: something listens there but closed it (", detail, "): ",
                  tls ? "a controller that demands client certificates (mutual TLS) does so to a client without "
                        "--tls-cert and --tls-key (MOEX_TLS_CERT, MOEX_TLS_KEY)"
                      : "a controller that serves TLS does so to a plaintext client; give --tls-ca (MOEX_TLS_CA)");
  }
  return StrCat("no controller at ", controller, " (", detail, ")");
}

}  // namespace

CLI::App* AddServeCommand(CLI::App& app, ServeFlags& f) {
  CLI::App* serve = app.add_subcommand("serve", "Run the controller: jobs, ranks and placements over gRPC");
  serve->add_option("--listen", f.listen, "Address to listen on (loopback unless told otherwise)")->capture_default_str();
  serve->add_option("--state-dir", f.state_dir, "Where job records (SQLite) and logs live")->required();
  serve->add_option("--log-format", f.log_format, "Log lines on stderr as text or json (one event a line)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  serve->add_option("--metrics-listen", f.metrics_listen,
                    "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free one; docs/metrics.md)");
  serve->add_option("--max-world-size", f.max_world_size, "Largest world size a job may ask for")->capture_default_str();
  serve->add_option("--max-jobs", f.max_jobs, "Jobs that may be active at once")->capture_default_str();
  serve->add_option("--max-streams", f.max_streams, "Watch and log streams that may be open at once")->capture_default_str();
  serve->add_option("--jobs-in-memory", f.jobs_in_memory, "Ended jobs kept in memory (older ones are read from the store)")
      ->capture_default_str();
  serve->add_option("--weight-cache-root", f.weight_cache_root,
                    "Jobs that may restart keep loaded weights under here on each host, so that a relaunch loads only "
                    "what is missing (\"\": off)")
      ->capture_default_str();
  serve->add_option("--start-timeout", f.start_timeout, "Seconds for every rank of a job to register")->capture_default_str();
  serve->add_option("--heartbeat-timeout", f.heartbeat_timeout, "Seconds of silence after which a rank is dead")->capture_default_str();
  serve->add_option("--cancel-grace", f.cancel_grace, "Seconds between SIGTERM and SIGKILL on cancel")->capture_default_str();
  serve->add_option("--token-file", f.token_file,
                    "Require this bearer token (the file's first line; mode 600) on every call but health");
  serve->add_option("--tls-cert", f.tls_cert, "Serve TLS with this PEM certificate");
  serve->add_option("--tls-key", f.tls_key, "and this PEM private key");
  serve->add_option("--tls-client-ca", f.tls_client_ca, "Demand client certificates signed by this CA (mutual TLS)");
  serve->add_flag("--insecure", f.insecure,
                  "Listen on an address other hosts reach (not loopback) with neither --token-file nor mutual TLS: "
                  "anyone who connects may run jobs");
  serve->add_option("--advertise", f.advertise,
                    "HOST[:PORT] that ranks on other hosts reach the controller by (default: the listen address; "
                    "no port: the port it listens on)");
  serve->add_option("--data-root", f.data_roots,
                    "A directory under which jobs may name files (--model config.json, --weights), repeatable; "
                    "symbolic links are followed first (default: none, presets only and no weights)");
  serve->add_option("--keep-jobs", f.keep_jobs,
                    "Keep the records and logs of this many ended jobs (the newest), deleting older ones (0: all)")
      ->capture_default_str();
  serve->add_option("--keep-days", f.keep_days,
                    "Delete the records and logs of jobs that ended more than this many days ago (0: never)")
      ->capture_default_str();
  serve->add_option("--launcher", f.launcher, "How ranks are started: mpirun (this host, or --hostfile) or slurm")
      ->capture_default_str();
  serve->add_option("--hostfile", f.hostfile, "mpirun: spread ranks over the hosts of this Open MPI hostfile");
  serve->add_option("--mpirun", f.mpirun, "mpirun: the program")->capture_default_str();
  serve->add_option("--mpirun-args", f.mpirun_args,
                    "mpirun: its options, split on white space into argv words (no shell, no quotes); replace the "
                    "defaults --oversubscribe --mca btl self,vader,tcp");
  serve->add_option("--slurm-partition", f.slurm_partition, "slurm: the partition of every job (default: Slurm's)");
  serve->add_option("--slurm-account", f.slurm_account, "slurm: the account charged");
  serve->add_option("--slurm-time-limit", f.slurm_time_limit, "slurm: srun --time of each attempt (default: the partition's)");
  serve->add_option("--slurm-mpi", f.slurm_mpi, "slurm: srun --mpi plugin")->capture_default_str();
  serve->add_option("--srun-args", f.srun_args, "slurm: more srun options, split on white space into argv words");
  return serve;
}

int RunServe(const ServeFlags& f) {
  // The controller logs under its lock: lines go through a queue that a
  // stderr nobody reads cannot stall (core/log.h).
  if (absl::Status logging = log::Configure(f.log_format, "serve", /*never_block=*/true); !logging.ok()) {
    std::cerr << "moex serve: error: " << logging.message() << "\n";
    return 2;
  }
  auto token = cluster::ReadTokenFile(f.token_file);
  if (!token.ok()) {
    std::cerr << "moex serve: error: " << token.status().message() << "\n";
    return 1;
  }
  cluster::ControllerOptions options;
  options.listen = f.listen;
  options.state_dir = f.state_dir;
  options.limits.max_world_size = f.max_world_size;
  options.limits.data_roots = f.data_roots;
  options.max_concurrent_jobs = f.max_jobs;
  options.max_streams = f.max_streams;
  options.max_ended_in_memory = std::max(0, f.jobs_in_memory);
  if (f.keep_jobs < 0 || !(f.keep_days >= 0)) {
    std::cerr << "moex serve: error: --keep-jobs and --keep-days must be 0 (no bound) or more\n";
    return 1;
  }
  options.keep_jobs = f.keep_jobs;
  options.keep_days = f.keep_days;
  options.weight_cache_root = f.weight_cache_root;
  options.start_timeout_seconds = f.start_timeout;
  options.heartbeat_timeout_seconds = f.heartbeat_timeout;
  options.cancel_grace_seconds = f.cancel_grace;
  options.token = *token;
  options.insecure = f.insecure;
  options.tls_cert = f.tls_cert;
  options.tls_key = f.tls_key;
  options.tls_client_ca = f.tls_client_ca;
  options.advertise = f.advertise;
  options.metrics_listen = f.metrics_listen;
  launcher::LauncherOptions& l = options.launcher;
  l.kind = f.launcher;
  l.hostfile = f.hostfile;
  l.mpirun = f.mpirun;
  l.slurm_partition = f.slurm_partition;
  l.slurm_account = f.slurm_account;
  l.slurm_time_limit = f.slurm_time_limit;
  l.slurm_mpi = f.slurm_mpi;
  for (auto [flag, text, words] : {std::tuple{"--mpirun-args", &f.mpirun_args, &l.mpirun_args},
                                   std::tuple{"--srun-args", &f.srun_args, &l.srun_args}}) {
    absl::StatusOr<std::vector<std::string>> split = launcher::SplitArgs(*text, flag);
    if (!split.ok()) {
      std::cerr << "moex serve: error: " << split.status().message() << "\n";
      return 1;
    }
    if (!text->empty()) *words = std::move(*split);  // given: replaces the defaults
  }
  // SIGINT/SIGTERM end the controller cleanly: running jobs are stopped and
  // recorded as FAILED, saying why.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto controller = cluster::Controller::Start(options);
  if (!controller.ok()) {
    std::cerr << "moex serve: error: " << controller.status().message() << "\n";
    return 1;
  }
  std::cout << "moex serve: listening on " << f.listen.substr(0, f.listen.rfind(':')) << ":" << (*controller)->port()
            << ", state in " << f.state_dir << (token->empty() ? "" : ", token required") << std::endl;
  if (!f.metrics_listen.empty()) {
    std::cout << "moex serve: metrics at http://" << (*controller)->metrics_address() << "/metrics" << std::endl;
  }
  int signal = 0;
  sigwait(&signals, &signal);
  std::cout << "moex serve: " << strsignal(signal) << ": stopping" << std::endl;
  (*controller)->Shutdown();
  controller->reset();
  log::Shutdown();
  return 0;
}

namespace {

// The --bench-* lists into the spec; the controller checks the values.
absl::Status FillBenchSpec(const JobFlags& f, moex::v1::BenchSpec* b) {
  auto ints = [](const std::string& flag, const std::string& text, auto* field) -> absl::Status {
    for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
      int64_t v = 0;
      if (!absl::SimpleAtoi(part, &v)) return absl::InvalidArgumentError(StrCat("--", flag, ": '", part, "' is not an integer"));
      field->Add(v);
    }
    return absl::OkStatus();
  };
  MOEX_RETURN_IF_ERROR(ints("bench-tokens", f.bench_tokens, b->mutable_tokens_per_rank()));
  MOEX_RETURN_IF_ERROR(ints("bench-hidden", f.bench_hidden, b->mutable_hidden()));
  MOEX_RETURN_IF_ERROR(ints("bench-top-k", f.bench_top_k, b->mutable_top_k()));
  MOEX_RETURN_IF_ERROR(ints("bench-experts", f.bench_experts, b->mutable_experts()));
  MOEX_RETURN_IF_ERROR(ints("bench-expert-width", f.bench_expert_width, b->mutable_expert_width()));
  for (absl::string_view part : absl::StrSplit(f.bench_skew, ',', absl::SkipEmpty())) {
    double v = 0;
    if (!absl::SimpleAtod(part, &v)) return absl::InvalidArgumentError(StrCat("--bench-skew: '", part, "' is not a number"));
    b->add_skew(v);
  }
  b->set_no_layer(f.bench_no_layer);
  b->set_reps(f.bench_reps);
  b->set_warmup(f.bench_warmup);
  return absl::OkStatus();
}

}  // namespace

CLI::App* AddJobCommand(CLI::App& app, JobFlags& f) {
  CLI::App* job = app.add_subcommand("job", "Submit, inspect, cancel and follow jobs on a controller");
  job->require_subcommand(1);
  job->fallthrough();  // `moex job list --json`: parent flags after the subcommand
  job->add_option("--controller", f.controller, "Controller address (default: $MOEX_CONTROLLER or 127.0.0.1:50051)");
  job->add_option("--token-file", f.token_file, "Bearer token for the controller (default: $MOEX_TOKEN_FILE)");
  job->add_flag("--json", f.json, "Print JSON");
  job->add_option("--tls-ca", f.tls_ca, "Talk TLS, trusting this CA (default: $MOEX_TLS_CA)");
  job->add_option("--tls-cert", f.tls_cert, "Client certificate for mutual TLS (default: $MOEX_TLS_CERT)");
  job->add_option("--tls-key", f.tls_key, "Its private key (default: $MOEX_TLS_KEY)");
  CLI::App* submit = job->add_subcommand("submit", "Submit a job");
  submit->add_option("--name", f.name, "Name, [A-Za-z0-9._-]")->capture_default_str();
  submit->add_option("--world-size,-n", f.world_size, "Ranks")->capture_default_str();
  submit->add_option("--model,-m", f.model, "Preset or a config.json readable by the controller")->capture_default_str();
  submit->add_option("--weights", f.weights,
                     "A .safetensors file, index or folder readable by the controller and the ranks (default: random "
                     "from --seed); a relative path that exists here is sent as an absolute one");
  submit->add_option("--steps", f.steps, "Forward passes")->capture_default_str();
  submit->add_option("--tokens-per-rank", f.tokens_per_rank, "Tokens per rank per step")->capture_default_str();
  submit->add_option("--transport", f.transport, "mpi or ucx on CPUs, nccl on GPUs (default: mpi, or nccl with --device cuda)");
  submit->add_option("--device", f.device, "cpu, or cuda: a GPU a rank, through the CUDA plugin")->capture_default_str();
  submit->add_option("--weight-dtype", f.weight_dtype,
                     "Random experts are made and held in this dtype: f32, bf16, f16, fp8 or mxfp4 (a checkpoint's "
                     "keep their own)")
      ->capture_default_str();
  submit->add_flag("--copy-weights", f.copy_weights,
                   "Read a checkpoint's experts into each rank instead of mapping them (moex run --load copy)");
  submit->add_option("--ranks-per-host", f.ranks_per_host, "Ranks on each host (0: the launcher decides)")
      ->capture_default_str();
  submit->add_option("--hosts", f.hosts, "Only these hosts (comma-separated; the launcher's names)")->delimiter(',');
  submit->add_option("--dispatch", f.dispatch, "auto, flat or hierarchical: how tokens cross between hosts")
      ->capture_default_str();
  submit->add_option("--dispatch-dtype", f.dispatch_dtype, "fp32 or fp8 (e4m3, a scale per 128 values): token rows "
                     "between hosts")
      ->capture_default_str();
  submit->add_option("--layer", f.layer, "Layer index (default: first MoE layer)");
  submit->add_option("--routing-skew", f.routing_skew, "Zipf exponent of synthetic routing")->capture_default_str();
  submit->add_option("--seed", f.seed, "Seed")->check(Unsigned64())->capture_default_str();
  submit->add_option("--redundant-experts", f.redundant_experts, "Expert replicas")->capture_default_str();
  submit->add_flag("--check", f.check, "Check the output against a single-process computation");
  submit->add_option("--exchange-timeout", f.exchange_timeout, "Seconds an exchange may wait (0: 60)");
  submit->add_flag("--wait", f.wait, "Follow the job until it ends; exit non-zero unless it SUCCEEDED");
  submit->add_option("--rebalance-threshold", f.rebalance_threshold,
                     "The controller moves experts when the window's max/mean rank load exceeds this (0: only on request)");
  submit->add_option("--rebalance-interval", f.rebalance_interval, "Steps between placement changes at least (0: 10)");
  submit->add_option("--rebalance-window", f.rebalance_window, "Steps of load a decision looks at (0: 4)");
  submit->add_option("--rebalance-policy", f.rebalance_policy, "refined (default) or eplb");
  submit->add_option("--max-restarts", f.max_restarts,
                     "Relaunch up to this many times when a rank dies or goes silent, resuming after the last step (0-10)")
      ->capture_default_str();
  submit->add_flag("--allow-shrink", f.allow_shrink, "Relaunch on the surviving ranks (same expert slots per rank)");
  submit->add_flag("--bench", f.bench, "Run `moex bench` points at this world size instead of the layer's steps");
  submit->add_option("--bench-tokens", f.bench_tokens, "Bench: tokens per rank, comma-separated (default 1024)");
  submit->add_option("--bench-hidden", f.bench_hidden, "Bench: hidden sizes (default 1024)");
  submit->add_option("--bench-top-k", f.bench_top_k, "Bench: experts per token (default 4)");
  submit->add_option("--bench-experts", f.bench_experts, "Bench: routed experts (default 32)");
  submit->add_option("--bench-expert-width", f.bench_expert_width, "Bench: expert intermediate sizes (default 256)");
  submit->add_option("--bench-skew", f.bench_skew, "Bench: Zipf exponents (default 0)");
  submit->add_flag("--bench-no-layer", f.bench_no_layer, "Bench: dispatch + combine only");
  submit->add_option("--bench-reps", f.bench_reps, "Bench: repetitions (0: 10)");
  submit->add_option("--bench-warmup", f.bench_warmup, "Bench: warm-up repetitions (0: 2)");
  for (const char* name : {"status", "cancel", "delete", "logs", "watch", "rebalance"}) {
    CLI::App* sub = job->add_subcommand(name, std::string(name) == "status" ? "Show a job"
                                              : std::string(name) == "cancel" ? "Cancel a job"
                                              : std::string(name) == "delete" ? "Delete an ended job's record and log"
                                              : std::string(name) == "logs"   ? "Print a job's log"
                                              : std::string(name) == "rebalance"
                                                  ? "Plan a placement from the job's load and move its experts now"
                                                  : "Follow a job's state until it ends");
    sub->add_option("id", f.id, "Job id")->required();
    if (std::string(name) == "logs") sub->add_flag("--follow,-f", f.follow, "Keep printing until the job ends");
    if (std::string(name) == "rebalance") sub->add_option("--policy", f.rebalance_policy, "refined or eplb (default: the job's)");
  }
  CLI::App* list = job->add_subcommand("list", "List jobs, oldest first");
  list->add_option("--page-size", f.page_size,
                   "Print one page of at most this many jobs (1-1000) and the command for the next (default: every page)");
  list->add_option("--page-token", f.page_token, "Start after this point (the next page's token)");
  for (CLI::App* sub : job->get_subcommands({})) {
    sub->add_option("--timeout", f.timeout, "Seconds a watch or followed log may last")->capture_default_str();
  }
  return job;
}

int RunJob(CLI::App& job, const JobFlags& given) {
  JobFlags f = given;
  if (f.controller.empty()) f.controller = std::getenv("MOEX_CONTROLLER") ? std::getenv("MOEX_CONTROLLER") : "127.0.0.1:50051";
  if (f.token_file.empty() && std::getenv("MOEX_TOKEN_FILE")) f.token_file = std::getenv("MOEX_TOKEN_FILE");
  auto token = cluster::ReadTokenFile(f.token_file);
  if (!token.ok()) {
    std::cerr << "moex job: error: " << token.status().message() << "\n";
    return 1;
  }
  cluster::TlsFiles tls = cluster::ClientTlsFromEnvironment();
  if (!f.tls_ca.empty()) tls.ca = f.tls_ca;
  if (!f.tls_cert.empty()) tls.cert = f.tls_cert;
  if (!f.tls_key.empty()) tls.key = f.tls_key;
  auto credentials = cluster::ClientCredentials(tls);
  if (!credentials.ok()) {
    std::cerr << "moex job: error: " << credentials.status().message() << "\n";
    return 1;
  }
  auto stub = moex::v1::JobService::NewStub(grpc::CreateChannel(f.controller, *credentials));
  auto context = [&](double seconds) {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    if (!token->empty()) c->AddMetadata("authorization", "Bearer " + *token);
    return c;
  };
  auto fail = [&](const grpc::Status& status) {
    std::cerr << "moex job: error: "
              << (status.error_code() == grpc::StatusCode::UNAVAILABLE
                      ? UnavailableMessage(f.controller, status.error_message(), !tls.ca.empty())
                      : status.error_message())
              << "\n";
    return 1;
  };
  auto watch = [&](const std::string& id) -> int {
    moex::v1::WatchJobRequest request;
    request.set_id(id);
    auto c = context(f.timeout);
    auto reader = stub->WatchJob(c.get(), request);
    moex::v1::Job job_state;
    moex::v1::JobState last = moex::v1::JOB_STATE_UNSPECIFIED;
    while (reader->Read(&job_state)) {
      if (f.json) {
        std::cout << ToJson(job_state) << std::endl;
      } else if (job_state.state() != last || cluster::IsTerminal(job_state.state())) {
        std::cout << absl::StrFormat("%s  %s: %s", job_state.id(), StateName(job_state.state()), job_state.message()) << std::endl;
      }
      last = job_state.state();
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return fail(status);
    return last == moex::v1::JOB_STATE_SUCCEEDED ? 0 : 1;
  };

  if (job.got_subcommand("submit")) {
    moex::v1::SubmitJobRequest request;
    auto* spec = request.mutable_spec();
    spec->set_name(f.name);
    spec->set_world_size(f.world_size);
    // A relative path that exists here is sent as an absolute one: the
    // controller resolves paths from its own directory.
    auto sent_path = [](const std::string& path) {
      std::error_code error;
      const bool here = std::filesystem::exists(path, error);
      const std::filesystem::path absolute = std::filesystem::absolute(path, error);
      return here && !error ? absolute.string() : path;
    };
    spec->set_model(model::FindPreset(f.model) ? f.model : sent_path(f.model));
    if (!f.weights.empty()) spec->set_weights(sent_path(f.weights));
    spec->set_steps(f.steps);
    spec->set_tokens_per_rank(f.tokens_per_rank);
    spec->set_transport(f.transport);
    spec->set_dispatch(f.dispatch);
    spec->set_dispatch_dtype(f.dispatch_dtype);
    spec->set_device(f.device);
    spec->set_weight_dtype(f.weight_dtype);
    spec->set_copy_weights(f.copy_weights);
    spec->set_ranks_per_host(f.ranks_per_host);
    for (const std::string& host : f.hosts) spec->add_hosts(host);
    if (f.layer) spec->set_layer(*f.layer);
    spec->set_routing_skew(f.routing_skew);
    spec->set_seed(f.seed);
    spec->set_redundant_experts(f.redundant_experts);
    spec->set_check(f.check);
    spec->set_exchange_timeout_seconds(f.exchange_timeout);
    spec->mutable_rebalance()->set_policy(f.rebalance_policy);
    spec->mutable_rebalance()->set_threshold(f.rebalance_threshold);
    spec->mutable_rebalance()->set_interval(f.rebalance_interval);
    spec->mutable_rebalance()->set_window(f.rebalance_window);
    spec->set_max_restarts(f.max_restarts);
    spec->set_allow_shrink(f.allow_shrink);
    if (f.bench) {
      absl::Status filled = FillBenchSpec(f, spec->mutable_bench());
      if (!filled.ok()) {
        std::cerr << "moex job: error: " << filled.message() << "\n";
        return 2;
      }
    }
    moex::v1::Job response;
    grpc::Status status = stub->SubmitJob(context(30).get(), request, &response);
    if (!status.ok()) return fail(status);
    if (f.json) std::cout << ToJson(response) << std::endl;
    else std::cout << "submitted " << response.id() << " (" << StateName(response.state()) << ")" << std::endl;
    return f.wait ? watch(response.id()) : 0;
  }
  if (job.got_subcommand("status") || job.got_subcommand("cancel") || job.got_subcommand("delete")) {
    moex::v1::Job response;
    grpc::Status status;
    if (job.got_subcommand("status")) {
      moex::v1::GetJobRequest request;
      request.set_id(f.id);
      status = stub->GetJob(context(10).get(), request, &response);
    } else if (job.got_subcommand("delete")) {
      moex::v1::DeleteJobRequest request;
      request.set_id(f.id);
      status = stub->DeleteJob(context(30).get(), request, &response);
      if (status.ok() && !f.json) {
        std::cout << "deleted " << response.id() << " (" << StateName(response.state()) << "), its record and its log"
                  << std::endl;
        return 0;
      }
    } else {
      moex::v1::CancelJobRequest request;
      request.set_id(f.id);
      status = stub->CancelJob(context(10).get(), request, &response);
    }
    if (!status.ok()) return fail(status);
    if (f.json) std::cout << ToJson(response) << std::endl;
    else PrintJob(response);
    return 0;
  }
  if (job.got_subcommand("list")) {
    // Every page, oldest first; or, with --page-size, one page.
    if (f.page_size < 0 || f.page_size > 1000) {
      std::cerr << "moex job list: error: --page-size is " << f.page_size << "; it must be 1 to 1000\n";
      return 2;
    }
    moex::v1::ListJobsResponse response;
    moex::v1::ListJobsRequest request;
    request.set_page_size(f.page_size > 0 ? f.page_size : 1000);
    request.set_page_token(f.page_token);
    do {
      moex::v1::ListJobsResponse page;
      grpc::Status status = stub->ListJobs(context(10).get(), request, &page);
      if (!status.ok()) return fail(status);
      for (auto& j : *page.mutable_jobs()) *response.add_jobs() = std::move(j);
      request.set_page_token(page.next_page_token());
    } while (f.page_size == 0 && !request.page_token().empty());
    if (f.page_size > 0) response.set_next_page_token(request.page_token());
    if (f.json) {
      std::cout << ToJson(response) << std::endl;
      return 0;
    }
    std::cout << absl::StrFormat("%-16s %-10s %-20s %5s %-20s %s\n", "ID", "STATE", "NAME", "RANKS", "SUBMITTED", "MESSAGE");
    for (const auto& j : response.jobs()) {
      std::string message = j.message().size() > 60 ? j.message().substr(0, 57) + "..." : j.message();
      std::cout << absl::StrFormat("%-16s %-10s %-20s %5d %-20s %s\n", j.id(), StateName(j.state()), j.spec().name(),
                                   j.spec().world_size(), Time(j.submit_time_unix_ms()), message);
    }
    if (!response.next_page_token().empty()) {
      std::cerr << "next page: moex job list --page-size " << f.page_size << " --page-token "
                << response.next_page_token() << std::endl;
    }
    return 0;
  }
  if (job.got_subcommand("watch")) return watch(f.id);
  if (job.got_subcommand("rebalance")) {
    auto placements = moex::v1::PlacementService::NewStub(grpc::CreateChannel(f.controller, *credentials));
    moex::v1::RebalanceRequest request;
    request.set_job_id(f.id);
    request.set_policy(f.rebalance_policy);
    moex::v1::Placement response;
    grpc::Status status = placements->Rebalance(context(30).get(), request, &response);
    if (!status.ok()) return fail(status);
    if (f.json) {
      std::cout << ToJson(response) << std::endl;
    } else {
      std::cout << absl::StrFormat("job %s: placement version %d published; the ranks move to it at a step boundary\n",
                                   f.id, response.version());
    }
    return 0;
  }
  if (job.got_subcommand("logs")) {
    moex::v1::GetJobLogsRequest request;
    request.set_id(f.id);
    request.set_follow(f.follow);
    auto c = context(f.timeout);
    auto reader = stub->GetJobLogs(c.get(), request);
    moex::v1::LogChunk chunk;
    while (reader->Read(&chunk)) std::cout << chunk.data() << std::flush;
    grpc::Status status = reader->Finish();
    return status.ok() ? 0 : fail(status);
  }
  return 2;
}

}  // namespace moex::cli
