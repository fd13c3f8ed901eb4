// `moex plan`: flags, and the command itself, apart from main() so that tests
// can run it with their own streams.
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "CLI/CLI.hpp"

namespace moex::cli {

struct PlanFlags {
  std::string model;  // defaults to model::kDefaultModel
  std::string dtype;  // "": the config's, or bf16 (plan::ChooseDtype)
  int64_t context = 4096;
  std::optional<int64_t> gpus;
  int64_t gpus_per_node = 8;
  double gpu_mem_gib = 80.0;
  bool json = false;
  bool list = false;
  // --perf: the performance model of one MoE layer per EP size.
  bool perf = false;
  std::string cluster = "h100";
  std::string ep = "8,16,32,64,128,256";
  int64_t tokens_per_rank = 4096;
  std::string dispatch_dtype = "fp8";
  std::string combine_dtype = "bf16";
  std::string expert_dtype = "fp8";
  double routing_skew = 0;
  std::string load;  // {"load": [[per logical expert, ...]]}: the first row
  std::string mode = "normal";        // or "low-latency" (DeepEP's low-latency kernels)
  std::string ll_intranode = "rdma";  // low-latency mode: same-node messages over "rdma" or "nvlink"
};

// Adds the `plan` subcommand to `app`, filling `flags` when parsed.
CLI::App* AddPlanCommand(CLI::App& app, PlanFlags& flags);

// Runs it. Returns the process exit code: 0, or 1 with the error on `err`.
int RunPlan(const PlanFlags& flags, std::ostream& out, std::ostream& err);

}  // namespace moex::cli
