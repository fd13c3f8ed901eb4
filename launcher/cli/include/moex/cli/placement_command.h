// `moex placement plan`: where each expert's replicas go, from a load file
// (moex's, or SGLang's or vLLM's load statistics), optionally written as the
// placement SGLang or vLLM reads.
#pragma once

#include <ostream>
#include <string>

#include "CLI/CLI.hpp"

namespace moex::cli {

struct PlacementFlags {
  std::string load;     // {"load": [[per logical expert...], ...one row per layer]}
  std::string load_format = "moex";     // or sglang, vllm (placement/engine_formats.h)
  int64_t replicas = 0;
  int64_t groups = 1;
  int64_t nodes = 1;
  int64_t gpus = 0;
  std::string policy = "refined";
  std::string current;  // a placement printed by this command (--json)
  std::string current_format = "moex";  // or sglang, vllm
  std::string export_format;            // write the plan as moex, sglang or vllm reads it...
  std::string out;                      // ...to this file
  int64_t export_layers = 0;            // rows of the exported map (0: the load's)
  int64_t export_first_layer = 0;       // the exported row of the load's layer 0
  bool json = false;
};

CLI::App* AddPlacementCommand(CLI::App& app, PlacementFlags& flags);
int RunPlacement(const PlacementFlags& flags, std::ostream& out, std::ostream& err);

}  // namespace moex::cli
