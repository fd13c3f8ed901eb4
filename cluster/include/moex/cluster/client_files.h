// The files a client names in a JobSpec (spec.model when it is not a preset,
// spec.weights), as the controller checks them at submit. The controller
// reads with its own user's rights on behalf of a client that may have none,
// so:
//   - a client may only name files under the directories the operator
//     allows (`moex serve --data-root DIR`, repeatable; none by default);
//     symbolic links and `..` are followed (realpath) before the check, so a
//     link inside a root that leads out is refused like any path outside;
//   - a file must be a regular file, of bounded size;
//   - an error names the field, the path as the client gave it and the
//     problem ("is not JSON", "is not a safetensors file", "is not a model
//     config: field num_experts is missing"), and never a byte of the file:
//     no line, no value, no header length, no size.
// `moex run` (no controller) reads its files through the runtime readers,
// whose detailed messages quote what they found; these checks run before
// them on the controller's path only.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/model/moe_layer_spec.h"

namespace moex::cluster {

// Each directory resolved (realpath), in the order given; an error names one
// that does not exist or is not a directory.
absl::StatusOr<std::vector<std::string>> CanonicalDataRoots(const std::vector<std::string>& dirs);

// spec.model when it is not a preset: a config.json, or a directory holding
// one, under `roots` (canonical, as CanonicalDataRoots gives), that parses as
// a model config moex reads. Returns the resolved config.json path, which the
// spec then carries: the ranks read exactly the file that was checked.
absl::StatusOr<std::string> CheckModelFile(const std::string& model, const std::vector<std::string>& roots);

// spec.weights: a .safetensors file, a model.safetensors.index.json or a
// directory holding either, under `roots`, every file of it (each shard an
// index names, too) under them and a safetensors file, holding `layer`'s
// router of its shape. Returns the resolved path the spec then carries.
absl::StatusOr<std::string> CheckWeightsFiles(const std::string& weights, const std::vector<std::string>& roots,
                                              const model::MoeLayerSpec& layer);

}  // namespace moex::cluster
