// `moex serve` (the controller) and `moex job …` (its client), like `ray job`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace moex::cli {

struct ServeFlags {
  std::string listen = "127.0.0.1:50051";
  std::string state_dir;
  int max_world_size = 64;
  int max_jobs = 8;
  int max_streams = 256;
  int jobs_in_memory = 256;
  std::string weight_cache_root = "/dev/shm";
  double start_timeout = 60;
  double heartbeat_timeout = 30;
  double cancel_grace = 5;
  std::string token_file;
  std::string tls_cert, tls_key, tls_client_ca;
  bool insecure = false;  // a non-loopback --listen with neither token nor mutual TLS
  std::string advertise;  // HOST[:PORT] ranks on other hosts reach the controller by
  std::string metrics_listen;  // HOST:PORT of the Prometheus endpoint; empty: none
  std::string log_format = "text";  // text or json
  // Directories under which a job's spec may name files (model configs,
  // weights); none: presets only, and no weights.
  std::vector<std::string> data_roots;
  // Retention: ended jobs past the newest N, and those ended over D days
  // ago, are deleted with their logs (0: no bound).
  int keep_jobs = 0;
  double keep_days = 0;
  // How ranks are started: mpirun (this host, or --hostfile) or slurm.
  std::string launcher = "mpirun";
  std::string hostfile, mpirun = "mpirun", mpirun_args;
  std::string slurm_partition, slurm_account, slurm_time_limit, slurm_mpi = "pmix", srun_args;
};

struct JobFlags {
  std::string controller;  // --controller, else MOEX_CONTROLLER, else 127.0.0.1:50051
  std::string token_file;  // --token-file, else MOEX_TOKEN_FILE
  std::string tls_ca, tls_cert, tls_key;  // else MOEX_TLS_CA, MOEX_TLS_CERT, MOEX_TLS_KEY
  bool json = false;
  double timeout = 3600;   // seconds a watch or a followed log may last
  std::string id;
  bool follow = false;
  bool wait = false;
  // list: one page of this many jobs (0: every page), after page_token
  int page_size = 0;
  std::string page_token;
  // submit
  std::string name = "job";
  int world_size = 2;
  std::string model = "tiny";
  std::string weights;
  int steps = 5;
  int tokens_per_rank = 256;
  std::string transport;  // "": mpi on CPUs, nccl with --device cuda
  std::string dispatch = "auto";
  std::string dispatch_dtype = "fp32";
  std::string device = "cpu";
  std::string weight_dtype = "f32";
  bool copy_weights = false;
  int ranks_per_host = 0;
  std::vector<std::string> hosts;
  std::optional<int> layer;
  double routing_skew = 0;
  uint64_t seed = 1;
  int redundant_experts = 0;
  bool check = false;
  double exchange_timeout = 0;
  std::string rebalance_policy;  // submit: the job's; rebalance: this once (default: the job's)
  double rebalance_threshold = 0;
  int rebalance_interval = 0;
  int rebalance_window = 0;
  int max_restarts = 0;
  bool allow_shrink = false;
  // submit --bench: a bench job (lists comma-separated; empty: the defaults)
  bool bench = false;
  std::string bench_tokens, bench_hidden, bench_top_k, bench_experts, bench_expert_width, bench_skew;
  bool bench_no_layer = false;
  int bench_reps = 0, bench_warmup = 0;
};

CLI::App* AddServeCommand(CLI::App& app, ServeFlags& flags);
int RunServe(const ServeFlags& flags);

// Adds `job` and its subcommands; returns the `job` command.
CLI::App* AddJobCommand(CLI::App& app, JobFlags& flags);
int RunJob(CLI::App& job, const JobFlags& flags);

}  // namespace moex::cli
