// `moex checkpoint`: checkpoints for tests and demonstrations.
//
//   moex checkpoint synth --model CONFIG [--layers 3,5-7] --dtype fp8|mxfp4|bf16|f32 --out DIR
//       [--seed S] [--shard-gib 5] [--threads N] [--force] [--json]
//
// writes a sharded safetensors checkpoint of the model's MoE layers
// (checkpoint_synth.h) whose weights are those `moex run --seed S` makes.
#pragma once

#include <ostream>

#include "CLI/CLI.hpp"
#include "moex/cli/checkpoint_synth.h"

namespace moex::cli {

struct CheckpointFlags {
  SynthOptions synth;
  bool json = false;
};

// Adds `checkpoint` and its `synth` subcommand to `app`.
CLI::App* AddCheckpointCommand(CLI::App& app, CheckpointFlags& flags);

// Runs the parsed subcommand: the summary on `out` (JSON with --json),
// progress and errors on `err`. Returns the exit code.
int RunCheckpoint(const CheckpointFlags& flags, std::ostream& out, std::ostream& err);

}  // namespace moex::cli
