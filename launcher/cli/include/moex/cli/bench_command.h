// `moex bench`: dispatch/combine and whole-layer benchmarks beside a plain
// MPI_Alltoallv of the same bytes, swept over ranks and shapes.
//
//   moex bench sweep [--ranks 1,2,4] [--scaling weak|strong|grid] [--transports mpi,ucx]
//       [--tokens 1024,...] [--total-tokens 4096] [--hidden ...] [--top-k ...]
//       [--experts ...] [--expert-width ...] [--skew ...] [--no-layer]
//       [--reps 10] [--warmup 2] [--out DIR]        launches mpirun per rank count
//   mpirun -np N moex bench run [the same point lists] [--out FILE.jsonl]
//   moex bench report --results FILE [--out DIR]   JSON, CSV and SVG again
//   moex bench calibrate --results FILE --fit-ranks 1,2 [--out profile.json]
//
// As a job through the control plane: `moex job submit --bench ...`; the
// job's status carries every point.
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace moex::cli {

struct BenchFlags {
  std::string ranks = "1,2,4";
  std::string transports = "mpi";
  std::string scaling = "weak";
  std::string tokens = "1024";
  std::string total_tokens = "4096";
  std::string hidden = "1024";
  std::string top_k = "4";
  std::string experts = "32";
  std::string expert_width = "256";
  std::string skew = "0";
  bool no_layer = false;
  int warmup = 2;
  int reps = 10;
  uint64_t seed = 1;
  double timeout = 120;          // seconds one exchange may wait
  double run_timeout = 3600;     // seconds one mpirun of a sweep may take
  std::string transport = "mpi"; // `bench run`
  std::string out;
  std::string results;
  std::string fit_ranks;
  std::string fit_tokens;
  std::string only_ranks;
  std::string mpirun = "mpirun";
  std::string mpirun_args = "--oversubscribe --mca btl self,vader,tcp";
  bool json = false;
  bool internode = false;  // `bench calibrate --internode`
};

CLI::App* AddBenchCommand(CLI::App& app, BenchFlags& flags);
int RunBench(CLI::App& bench, const BenchFlags& flags, int* argc, char*** argv);

}  // namespace moex::cli
