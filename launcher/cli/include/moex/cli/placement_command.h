// `moex placement plan`: where each expert's replicas go, from a load file.
#pragma once

#include <ostream>
#include <string>

#include "CLI/CLI.hpp"

namespace moex::cli {

struct PlacementFlags {
  std::string load;     // {"load": [[per logical expert...], ...one row per layer]}
  int64_t replicas = 0;
  int64_t groups = 1;
  int64_t nodes = 1;
  int64_t gpus = 0;
  std::string policy = "refined";
  std::string current;  // a placement printed by this command (--json)
  bool json = false;
};

CLI::App* AddPlacementCommand(CLI::App& app, PlacementFlags& flags);
int RunPlacement(const PlacementFlags& flags, std::ostream& out, std::ostream& err);

}  // namespace moex::cli
