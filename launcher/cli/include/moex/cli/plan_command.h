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
  std::string dtype = "bf16";
  int64_t context = 4096;
  std::optional<int64_t> gpus;
  int64_t gpus_per_node = 8;
  double gpu_mem_gib = 80.0;
  bool json = false;
  bool list = false;
};

// Adds the `plan` subcommand to `app`, filling `flags` when parsed.
CLI::App* AddPlanCommand(CLI::App& app, PlanFlags& flags);

// Runs it. Returns the process exit code: 0, or 1 with the error on `err`.
int RunPlan(const PlanFlags& flags, std::ostream& out, std::ostream& err);

}  // namespace moex::cli
