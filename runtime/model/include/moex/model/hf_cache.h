// Hugging Face ids ("deepseek-ai/DeepSeek-V3") found in the local hub cache.
//
// The cache that huggingface_hub fills looks like
//   <hub>/models--deepseek-ai--DeepSeek-V3/refs/main          (a commit hash)
//   <hub>/models--deepseek-ai--DeepSeek-V3/snapshots/<commit>/config.json
// moex reads it and never downloads: an id that is not there is an error that
// says where moex looked and how to fetch it.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moex::model {

// The environment variables that choose the hub folder, as huggingface_hub
// reads them; an unset one is empty.
struct HubEnv {
  std::string hf_hub_cache{};    // $HF_HUB_CACHE: the hub folder itself
  std::string hf_home{};         // $HF_HOME: the hub is $HF_HOME/hub
  std::string xdg_cache_home{};  // $XDG_CACHE_HOME: the hub is $XDG_CACHE_HOME/huggingface/hub
  std::string home{};            // $HOME: the hub is ~/.cache/huggingface/hub

  // This process's environment.
  static HubEnv FromProcess();
};

// The hub folder, and what chose it (e.g. "$HF_HUB_CACHE").
struct HubDir {
  std::string path;
  std::string chosen_by;
};

// The first of $HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub,
// ~/.cache/huggingface/hub that the environment sets. Empty path when none
// is set (no $HOME either).
HubDir FindHubDir(const HubEnv& env);

// True for "org/name": exactly one '/', both sides non-empty and of letters,
// digits, '-', '_', '.', neither starting with '.' nor holding "..", and not
// ending in ".json". Whether it exists is not checked.
bool LooksLikeHfId(std::string_view model);

// The snapshot folder of `id` in `hub`: the revision refs/main names when
// that file and its snapshot are there, else the newest snapshot folder by
// modification time. It must hold config.json. Errors name the folders and
// say that nothing is downloaded.
absl::StatusOr<std::string> FindSnapshot(std::string_view id, const HubDir& hub);

// What a front end (`moex plan`, `moex run`) passes to LoadModel for its
// --model value: a preset name, an existing path or anything that does not
// look like an id comes back unchanged; an id that is neither a preset nor a
// path comes back as its snapshot folder in the local cache, or an error.
absl::StatusOr<std::string> ResolveModel(std::string_view model, const HubEnv& env);
absl::StatusOr<std::string> ResolveModel(std::string_view model);

}  // namespace moex::model
