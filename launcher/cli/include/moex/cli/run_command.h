// `moex run`: one MoE layer, expert-parallel over the ranks of an mpirun job.
//
//   mpirun -np N moex run --model <preset|config.json> [--layer L]
//     [--weights FILE|INDEX|DIR] [--input FILE] [--output FILE]
//     [--tokens-per-rank T] [--steps S] [--transport mpi|ucx|nccl] [--device cpu|cuda]
//     [--routing-skew Z] [--seed S] [--redundant-experts R] [--check]
//     [--timeout SECONDS] [--json FILE] [--check-every-step]
//     [--rebalance-threshold X] [--rebalance-interval N] [--rebalance-window W]
//     [--rebalance-policy moex|eplb] [--rebalance-at-step S] [--migration-chunk-mb M]
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "moex/transport/transport.h"

namespace moex::cli {

struct RunFlags {
  std::string model = "mini-dsv3";
  std::optional<int64_t> layer;
  std::string weights;
  std::string save_weights;
  std::string weight_cache;  // a host directory (e.g. in /dev/shm) keeping loaded weights for a relaunch
  std::string input;
  std::string output;
  int64_t tokens_per_rank = 512;
  int64_t steps = 5;
  std::string transport = "mpi";
  std::string device = "cpu";  // "cuda": the layer on GPUs, tokens over NCCL
  double routing_skew = 0.0;
  uint64_t seed = 1;
  int64_t redundant_experts = 0;
  bool check = false;
  bool check_every_step = false;
  // Live rebalancing (off unless a threshold or a step is given).
  std::string rebalance_policy = "moex";
  double rebalance_threshold = 0;
  int64_t rebalance_interval = 10;
  int64_t rebalance_window = 4;
  int64_t rebalance_at_step = -1;
  double migration_chunk_mb = 64;
  double timeout_seconds = 60.0;
  std::string json;
  bool quiet = false;
  // `moex worker`: a rank of a controller-launched job; the spec comes from
  // the controller.
  std::string job_id;
  std::string controller;
  int64_t first_step = 0;  // a restarted job resumes after the steps done before
};

CLI::App* AddRunCommand(CLI::App& app, RunFlags& flags);
// `moex worker --job-id ID --controller ADDR`, what the controller launches.
CLI::App* AddWorkerCommand(CLI::App& app, RunFlags& flags);

// Runs on this rank (MPI is started inside). Returns the exit code; on an
// error every rank prints its diagnosis and the whole job ends non-zero.
int RunRun(const RunFlags& flags, int* argc, char*** argv);

// The transport a rank runs on ("mpi" or "ucx"); MPI must be started.
absl::StatusOr<std::unique_ptr<transport::Transport>> CreateRankTransport(const std::string& name);

}  // namespace moex::cli
