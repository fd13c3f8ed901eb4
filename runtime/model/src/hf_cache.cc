#include "moex/model/hf_cache.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <system_error>

#include "moex/core/str_cat.h"
#include "moex/model/presets.h"

namespace moex::model {
namespace {

namespace fs = std::filesystem;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

bool IdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.';
}

bool IdPart(std::string_view part) {
  if (part.empty() || part.size() > 96 || part.front() == '.') return false;
  if (part.find("..") != std::string_view::npos) return false;
  for (char c : part) {
    if (!IdChar(c)) return false;
  }
  return true;
}

// The revision refs/main names, when the file is there and holds one name.
std::optional<std::string> MainRevision(const fs::path& repo) {
  std::ifstream in(repo / "refs" / "main");
  if (!in) return std::nullopt;
  std::string revision;
  if (!std::getline(in, revision)) return std::nullopt;
  while (!revision.empty() && (revision.back() == '\r' || revision.back() == ' ' || revision.back() == '\t')) {
    revision.pop_back();
  }
  if (!IdPart(revision)) return std::nullopt;
  return revision;
}

// The snapshot folder modified last; ties go to the greater name, so that
// the choice does not depend on the order the directory lists them in.
std::optional<fs::path> NewestSnapshot(const fs::path& snapshots) {
  std::error_code error;
  std::optional<fs::path> newest;
  fs::file_time_type newest_time;
  for (fs::directory_iterator it(snapshots, error), end; !error && it != end; it.increment(error)) {
    if (!it->is_directory(error)) continue;
    const fs::file_time_type time = fs::last_write_time(it->path(), error);
    if (error) continue;
    if (!newest || time > newest_time || (time == newest_time && it->path().filename() > newest->filename())) {
      newest = it->path();
      newest_time = time;
    }
  }
  return newest;
}

std::string FetchHint(std::string_view id, std::string_view what = "") {
  return StrCat("moex downloads nothing: fetch it with `huggingface-cli download ", id, what.empty() ? "" : " ",
                what, "`");
}

}  // namespace

HubEnv HubEnv::FromProcess() {
  return HubEnv{.hf_hub_cache = Env("HF_HUB_CACHE"),
                .hf_home = Env("HF_HOME"),
                .xdg_cache_home = Env("XDG_CACHE_HOME"),
                .home = Env("HOME")};
}

HubDir FindHubDir(const HubEnv& env) {
  if (!env.hf_hub_cache.empty()) return {env.hf_hub_cache, "$HF_HUB_CACHE"};
  if (!env.hf_home.empty()) return {(fs::path(env.hf_home) / "hub").string(), "$HF_HOME/hub"};
  if (!env.xdg_cache_home.empty()) {
    return {(fs::path(env.xdg_cache_home) / "huggingface" / "hub").string(), "$XDG_CACHE_HOME/huggingface/hub"};
  }
  if (!env.home.empty()) {
    return {(fs::path(env.home) / ".cache" / "huggingface" / "hub").string(), "~/.cache/huggingface/hub"};
  }
  return {};
}

bool LooksLikeHfId(std::string_view model) {
  const size_t slash = model.find('/');
  if (slash == std::string_view::npos || model.find('/', slash + 1) != std::string_view::npos) return false;
  if (model.size() >= 5 && model.substr(model.size() - 5) == ".json") return false;
  return IdPart(model.substr(0, slash)) && IdPart(model.substr(slash + 1));
}

absl::StatusOr<std::string> FindSnapshot(std::string_view id, const HubDir& hub) {
  if (!LooksLikeHfId(id)) {
    return absl::InvalidArgumentError(StrCat("'", id, "' is not a Hugging Face id (org/name)"));
  }
  if (hub.path.empty()) {
    return absl::NotFoundError(StrCat("model '", id, "' is not a preset or a file, and no Hugging Face cache is "
                                      "known (none of $HF_HUB_CACHE, $HF_HOME, $XDG_CACHE_HOME, $HOME is set); ",
                                      FetchHint(id)));
  }
  std::string folder = StrCat("models--", id);
  folder.replace(folder.find('/'), 1, "--");
  const fs::path repo = fs::path(hub.path) / folder;
  const fs::path snapshots = repo / "snapshots";
  std::error_code error;
  if (!fs::is_directory(snapshots, error)) {
    return absl::NotFoundError(StrCat("model '", id, "' is not in the local Hugging Face cache (looked in ",
                                      repo.string(), "; the hub is ", hub.chosen_by, ", ", hub.path,
                                      "); it is not a preset or a file either; ", FetchHint(id)));
  }
  fs::path snapshot;
  std::string chosen;
  if (std::optional<std::string> main = MainRevision(repo); main && fs::is_directory(snapshots / *main, error)) {
    snapshot = snapshots / *main;
    chosen = "the snapshot refs/main names";
  } else if (std::optional<fs::path> newest = NewestSnapshot(snapshots)) {
    snapshot = *newest;
    chosen = "the newest snapshot";
  } else {
    return absl::NotFoundError(StrCat("model '", id, "': ", snapshots.string(),
                                      " holds no snapshot (an interrupted download?); ", FetchHint(id)));
  }
  if (!fs::exists(snapshot / "config.json", error)) {
    return absl::NotFoundError(StrCat("model '", id, "': ", snapshot.string(), " (", chosen,
                                      ") has no config.json; ", FetchHint(id, "config.json")));
  }
  return snapshot.string();
}

absl::StatusOr<std::string> ResolveModel(std::string_view model, const HubEnv& env) {
  if (model.empty() || FindPreset(model) || !LooksLikeHfId(model)) return std::string(model);
  std::error_code error;
  if (fs::exists(fs::path(std::string(model)), error)) return std::string(model);
  return FindSnapshot(model, FindHubDir(env));
}

absl::StatusOr<std::string> ResolveModel(std::string_view model) {
  return ResolveModel(model, HubEnv::FromProcess());
}

}  // namespace moex::model
