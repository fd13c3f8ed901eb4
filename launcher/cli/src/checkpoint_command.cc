#include "moex/cli/checkpoint_command.h"
#include "moex/core/provenance.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "moex/cli/flag_checks.h"
#include "moex/job/run_config.h"
#include "moex/model/presets.h"
#include "nlohmann/json.hpp"

namespace moex::cli {

CLI::App* AddCheckpointCommand(CLI::App& app, CheckpointFlags& flags) {
  CLI::App* checkpoint = app.add_subcommand("checkpoint", "Checkpoints for tests and demonstrations");
  checkpoint->require_subcommand(1);
  CLI::App* synth = checkpoint->add_subcommand(
      "synth", "Write a sharded safetensors checkpoint of a model's MoE layers, with the family's tensor names and "
               "formats, holding the random weights `moex run --seed` makes");
  SynthOptions& s = flags.synth;
  s.model = std::string(model::kDefaultModel);
  s.seed = job::RunConfig{}.seed;  // `moex run --seed`'s default: the same weights
  synth->add_option("--model,-m", s.model, "Preset name, a config.json, or a folder holding one")->capture_default_str();
  synth->add_option("--layers", s.layers, "MoE layers: an index, a range or a list (3, 3-5, 3,7; default: the first MoE layer)");
  synth->add_option("--dtype", s.dtype,
                    "Expert weights: fp8 (e4m3, 128x128 block scales), mxfp4 (blocks and e8m0 scales), bf16 or f32")
      ->capture_default_str();
  synth->add_option("--out,-o", s.out, "Folder to write (created; refused when not empty, unless --force)")->required();
  synth->add_option("--seed", s.seed, "Seed of the weights, as `moex run --seed`")->check(Unsigned64())->capture_default_str();
  synth->add_option("--shard-gib", s.shard_gib, "Most GiB of tensors in one shard")->capture_default_str();
  synth->add_option("--threads", s.threads, "Threads making the weights (0: one per core)")->capture_default_str();
  synth->add_flag("--force", s.force, "Write into a non-empty --out (earlier shards are removed)");
  synth->add_flag("--json", flags.json, "Print the summary as JSON");
  return checkpoint;
}

int RunCheckpoint(const CheckpointFlags& flags, std::ostream& out, std::ostream& err) {
  absl::StatusOr<SynthResult> result = SynthesizeCheckpoint(flags.synth, &err);
  if (!result.ok()) {
    err << "moex checkpoint synth: error: " << result.status().message() << "\n";
    return 1;
  }
  if (flags.json) {
    nlohmann::json files = nlohmann::json::array();
    for (const SynthShard& shard : result->shards) {
      files.push_back({{"file", shard.file}, {"bytes", shard.bytes}, {"tensors", shard.tensors}});
    }
    nlohmann::json summary = {{"out", result->out},         {"dtype", result->dtype},
                              {"layers", result->layers},   {"files", files},
                              {"bytes", result->file_bytes}, {"total_size", result->tensor_bytes},
                              {"tensors", result->tensors}, {"seconds", result->seconds}};
    summary["provenance"] = ProvenanceJson();
    out << summary.dump(2) << "\n";
    return 0;
  }
  out << absl::StrFormat("wrote %d tensors, %.2f GB in %d shard%s to %s in %.1f s (%.1f MB/s)\n", result->tensors,
                         static_cast<double>(result->file_bytes) / 1e9, result->shards.size(),
                         result->shards.size() == 1 ? "" : "s", result->out, result->seconds,
                         static_cast<double>(result->file_bytes) / 1e6 / std::max(result->seconds, 1e-9));
  return 0;
}

}  // namespace moex::cli
