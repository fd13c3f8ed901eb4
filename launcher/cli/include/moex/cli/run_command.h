// `moex run`: one MoE layer, expert-parallel over the ranks of an mpirun job.
//
//   mpirun -np N moex run --model <preset|config.json> [--layer L]
//     [--weights FILE|INDEX|DIR] [--input FILE] [--output FILE]
//     [--tokens-per-rank T] [--steps S] [--transport mpi|ucx|nccl] [--device cpu|cuda]
//     [--routing-skew Z] [--seed S] [--redundant-experts R] [--check]
//     [--timeout SECONDS] [--json FILE] [--check-every-step]
//     [--rebalance-threshold X] [--rebalance-interval N] [--rebalance-window W]
//     [--rebalance-policy refined|eplb] [--rebalance-at-step S] [--migration-chunk-mb M]
//
// and `moex worker`, a rank of a controller job. Both parse into a
// job::RunConfig and call run::RunLayer (runtime/run); this file only
// parses flags, starts MPI and prints errors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "moex/job/run_config.h"
#include "moex/transport/transport.h"

namespace moex::cli {

struct RunFlags {
  job::RunConfig config;
  // `moex worker`: a rank of a controller-launched job; the config comes
  // from the controller's JobSpec.
  std::string job_id;
  std::string controller;
  int attempt = 0;  // which launch of the job this rank belongs to (0: not said)
  // `moex worker --cleanup`: this host's cleanup of the job
  // (launcher/host_cleanup.h) instead of a rank.
  bool cleanup = false;
  std::string weight_cache_root;
  std::string shm_dir = "/dev/shm";
  // `moex run --metrics-listen HOST:PORT`: rank 0 serves Prometheus metrics.
  std::string metrics_listen;
  std::string log_format = "text";  // `moex run --log-format text|json`
};

CLI::App* AddRunCommand(CLI::App& app, RunFlags& flags);
// `moex worker --job-id ID --attempt N --controller ADDR`, what the
// controller launches; `moex worker --cleanup --job-id ID [--attempt N]
// [--weight-cache-root R]`, what a launcher runs once on each host of an
// ended job (or attempt).
CLI::App* AddWorkerCommand(CLI::App& app, RunFlags& flags);

// `moex worker`: the host cleanup, or a rank (RunRun).
int RunWorker(const RunFlags& flags, int* argc, char*** argv);

// Runs on this rank (MPI is started inside). Returns the exit code; on an
// error every rank prints its diagnosis and the whole job ends non-zero.
int RunRun(const RunFlags& flags, int* argc, char*** argv);

// The transport a rank runs on ("mpi" or "ucx"; "nccl": MPI, which carries
// counts while the GPU plugin carries rows); MPI must be started.
absl::StatusOr<std::unique_ptr<transport::Transport>> CreateRankTransport(const std::string& name);

}  // namespace moex::cli
