#include "moex/placement/engine_formats.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/placement/placement_file.h"
#include "moex/placement/policy.h"

namespace moex::placement {
namespace {

using nlohmann::json;

absl::Status Bad(std::string_view source, const std::string& what) {
  return absl::InvalidArgumentError(StrCat(source, ": ", what));
}

std::string Index(std::string_view name, size_t i) { return StrCat(name, "[", i, "]"); }

// A non-empty list of at most `limit` items; `name` is the field's path.
absl::Status CheckList(const json& v, std::string_view source, const std::string& name, int64_t limit,
                       std::string_view items) {
  if (!v.is_array() || v.empty()) return Bad(source, StrCat(name, " must be a non-empty list of ", items));
  if (static_cast<int64_t>(v.size()) > limit) {
    return Bad(source, StrCat(name, " has ", v.size(), " ", items, ", more than the ", limit, " moex reads"));
  }
  return absl::OkStatus();
}

// [rows][columns] of finite non-negative numbers, every row as long as the first.
absl::StatusOr<Matrix> ReadLoadMatrix(const json& v, std::string_view source, const std::string& name) {
  MOEX_RETURN_IF_ERROR(CheckList(v, source, name, kMaxLayers, "layers"));
  Matrix out;
  out.reserve(v.size());
  for (size_t l = 0; l < v.size(); ++l) {
    const std::string row_name = Index(name, l);
    MOEX_RETURN_IF_ERROR(CheckList(v[l], source, row_name, kMaxExperts, "experts"));
    if (l > 0 && v[l].size() != out[0].size()) {
      return Bad(source, StrCat(row_name, " has ", v[l].size(), " experts, ", Index(name, 0), " has ", out[0].size()));
    }
    std::vector<double> row;
    row.reserve(v[l].size());
    for (size_t e = 0; e < v[l].size(); ++e) {
      const json& x = v[l][e];
      const double value = x.is_number() ? x.get<double>() : -1.0;
      if (!std::isfinite(value) || value < 0) {
        return Bad(source, StrCat(Index(row_name, e), " (layer ", l, ", expert ", e, ") is not a finite non-negative number"));
      }
      row.push_back(value);
    }
    out.push_back(std::move(row));
  }
  return out;
}

// [steps][rows][columns], summed over the steps.
absl::StatusOr<Matrix> ReadSteppedLoad(const json& v, std::string_view source, const std::string& name) {
  if (!v.is_array() || v.empty()) return Bad(source, StrCat(name, " must be a non-empty list"));
  Matrix sum;
  for (size_t t = 0; t < v.size(); ++t) {
    MOEX_ASSIGN_OR_RETURN(Matrix step, ReadLoadMatrix(v[t], source, Index(name, t)));
    if (t == 0) {
      sum = std::move(step);
      continue;
    }
    if (step.size() != sum.size() || step[0].size() != sum[0].size()) {
      return Bad(source, StrCat(Index(name, t), " is ", step.size(), " layers x ", step[0].size(), " experts, ",
                                Index(name, 0), " is ", sum.size(), " x ", sum[0].size()));
    }
    for (size_t l = 0; l < sum.size(); ++l) {
      for (size_t e = 0; e < sum[l].size(); ++e) sum[l][e] += step[l][e];
    }
  }
  for (size_t l = 0; l < sum.size(); ++l) {
    for (size_t e = 0; e < sum[l].size(); ++e) {
      if (!std::isfinite(sum[l][e])) return Bad(source, StrCat(name, " summed over steps overflows at layer ", l, ", expert ", e));
    }
  }
  return sum;
}

// A list nested `depth` deep at its first elements (1: [x], 3: [[[x]]]).
int NestingDepth(const json& v) {
  int depth = 0;
  for (const json* p = &v; p->is_array() && !p->empty() && depth < 4; p = &(*p)[0]) ++depth;
  return depth;
}

// [rows][slots] of integers in [0, kMaxExperts), every row as long as the first.
absl::StatusOr<IndexMatrix> ReadIndexMatrix(const json& v, std::string_view source, const std::string& name) {
  MOEX_RETURN_IF_ERROR(CheckList(v, source, name, kMaxLayers, "layers"));
  IndexMatrix out;
  out.reserve(v.size());
  for (size_t l = 0; l < v.size(); ++l) {
    const std::string row_name = Index(name, l);
    MOEX_RETURN_IF_ERROR(CheckList(v[l], source, row_name, kMaxExperts, "physical experts"));
    if (l > 0 && v[l].size() != out[0].size()) {
      return Bad(source, StrCat(row_name, " has ", v[l].size(), " physical experts, ", Index(name, 0), " has ", out[0].size()));
    }
    std::vector<int64_t> row;
    row.reserve(v[l].size());
    for (size_t s = 0; s < v[l].size(); ++s) {
      const json& x = v[l][s];
      const bool in_range = x.is_number_unsigned() ? x.get<uint64_t>() < static_cast<uint64_t>(kMaxExperts)
                            : x.is_number_integer() ? x.get<int64_t>() >= 0 && x.get<int64_t>() < kMaxExperts
                                                    : false;
      if (!in_range) {
        return Bad(source, StrCat(Index(row_name, s), " (layer ", l, ", physical expert ", s,
                                  ") is not a logical expert id, an integer in [0, ", kMaxExperts, ")"));
      }
      row.push_back(x.get<int64_t>());
    }
    out.push_back(std::move(row));
  }
  return out;
}

absl::StatusOr<Matrix> ParseSglangLoad(const json& j, std::string_view source) {
  if (j.is_object() && j.contains("physical_to_logical_map") && !j.contains("logical_count")) {
    return Bad(source, "holds a placement (physical_to_logical_map), not load statistics (logical_count)");
  }
  if (!j.is_object() || !j.contains("logical_count")) {
    return Bad(source, "field 'logical_count' ([layers][logical experts], or [steps][layers][logical experts]) is missing");
  }
  const json& counts = j.at("logical_count");
  if (NestingDepth(counts) >= 3) return ReadSteppedLoad(counts, source, "logical_count");
  return ReadLoadMatrix(counts, source, "logical_count");
}

// vLLM's physical load (expert_load_window or expert_load_pass) mapped to
// logical experts through physical_to_logical_map.
absl::StatusOr<Matrix> ParseVllmPhysicalLoad(const json& j, std::string_view source) {
  const bool window = j.contains("expert_load_window");
  const std::string name = window ? "expert_load_window" : "expert_load_pass";
  Matrix physical;
  if (window) {
    MOEX_ASSIGN_OR_RETURN(physical, ReadSteppedLoad(j.at(name), source, name));
  } else {
    MOEX_ASSIGN_OR_RETURN(physical, ReadLoadMatrix(j.at(name), source, name));
  }
  if (!j.contains("physical_to_logical_map")) {
    return Bad(source, StrCat("field 'physical_to_logical_map' is missing: ", name, " counts physical experts"));
  }
  MOEX_ASSIGN_OR_RETURN(IndexMatrix map, ReadIndexMatrix(j.at("physical_to_logical_map"), source, "physical_to_logical_map"));
  if (map.size() != physical.size() || map[0].size() != physical[0].size()) {
    return Bad(source, StrCat("physical_to_logical_map is ", map.size(), " layers x ", map[0].size(), " physical experts, ",
                              name, " ", physical.size(), " x ", physical[0].size()));
  }
  // Every logical expert has a slot, so there are at most as many as slots.
  int64_t num_logical = 0;
  for (size_t l = 0; l < map.size(); ++l) {
    for (size_t p = 0; p < map[l].size(); ++p) {
      if (map[l][p] >= static_cast<int64_t>(map[l].size())) {
        return Bad(source, StrCat(Index(Index("physical_to_logical_map", l), p), " (layer ", l, ", physical expert ", p,
                                  ") is logical expert ", map[l][p], ", beyond the ", map[l].size(), " physical experts"));
      }
      num_logical = std::max(num_logical, map[l][p] + 1);
    }
  }
  Matrix load(map.size(), std::vector<double>(num_logical, 0.0));
  for (size_t l = 0; l < map.size(); ++l) {
    std::vector<bool> seen(num_logical, false);
    for (size_t p = 0; p < map[l].size(); ++p) {
      load[l][map[l][p]] += physical[l][p];
      seen[map[l][p]] = true;
    }
    for (int64_t e = 0; e < num_logical; ++e) {
      if (!seen[e]) return Bad(source, StrCat(Index("physical_to_logical_map", l), " holds no replica of logical expert ", e));
    }
  }
  return load;
}

absl::StatusOr<Matrix> ParseVllmLoad(const json& j, std::string_view source) {
  if (j.is_object() && j.contains("global_expert_load")) {
    return ReadLoadMatrix(j.at("global_expert_load"), source, "global_expert_load");
  }
  if (j.is_object() && (j.contains("expert_load_window") || j.contains("expert_load_pass"))) {
    return ParseVllmPhysicalLoad(j, source);
  }
  return Bad(source, "needs field 'global_expert_load' ([moe layers][logical experts]) or 'expert_load_window' "
                     "([window][moe layers][physical experts]) with 'physical_to_logical_map'");
}

absl::StatusOr<Matrix> ParseMoexLoad(const json& j, std::string_view source) {
  if (!j.is_object() || !j.contains("load")) return Bad(source, "field 'load' must be a non-empty list of rows");
  return ReadLoadMatrix(j.at("load"), source, "load");
}

}  // namespace

absl::StatusOr<EngineFormat> ParseEngineFormat(std::string_view name) {
  if (name == "moex") return EngineFormat::kMoex;
  if (name == "sglang") return EngineFormat::kSglang;
  if (name == "vllm") return EngineFormat::kVllm;
  return absl::InvalidArgumentError(StrCat("unknown format '", name, "'; known: ", kEngineFormatNames));
}

std::string_view EngineFormatName(EngineFormat format) {
  switch (format) {
    case EngineFormat::kSglang: return "sglang";
    case EngineFormat::kVllm: return "vllm";
    case EngineFormat::kMoex: break;
  }
  return "moex";
}

bool LooksLikeTorchFile(std::string_view path, std::string_view first_bytes) {
  auto ends_with = [&](std::string_view suffix) {
    return path.size() >= suffix.size() && path.substr(path.size() - suffix.size()) == suffix;
  };
  // torch.save writes a zip (PK\3\4); the legacy format is a pickle (\x80).
  return ends_with(".pt") || ends_with(".pth") || first_bytes.substr(0, 4) == std::string_view("PK\x03\x04", 4) ||
         (!first_bytes.empty() && first_bytes[0] == '\x80');
}

absl::Status TorchFileError(std::string_view path) {
  return absl::InvalidArgumentError(StrCat(
      path, ": a torch file (.pt, a pickle); moex reads only JSON. Convert it with: python3 -c \"import json,sys,torch; "
            "d=torch.load(sys.argv[1],weights_only=True); json.dump({k:(v.tolist() if hasattr(v,'tolist') else v) "
            "for k,v in d.items()},open(sys.argv[2],'w'))\" ",
      path, " out.json"));
}

absl::StatusOr<Matrix> ParseEngineLoad(const nlohmann::json& j, EngineFormat format, std::string_view source) {
  switch (format) {
    case EngineFormat::kSglang: return ParseSglangLoad(j, source);
    case EngineFormat::kVllm: return ParseVllmLoad(j, source);
    case EngineFormat::kMoex: break;
  }
  return ParseMoexLoad(j, source);
}

absl::StatusOr<IndexMatrix> ParseEnginePlacement(const nlohmann::json& j, EngineFormat format, std::string_view source) {
  if (format == EngineFormat::kMoex) {
    MOEX_ASSIGN_OR_RETURN(IndexMatrix phy2log, ParsePlacementFile(j, source));
    for (size_t l = 0; l < phy2log.size(); ++l) {
      for (size_t s = 0; s < phy2log[l].size(); ++s) {
        if (phy2log[l][s] >= kMaxExperts) return Bad(source, StrCat("layers[", l, "].phy2log[", s, "] is too large"));
      }
    }
    return phy2log;
  }
  if (!j.is_object() || !j.contains("physical_to_logical_map")) {
    if (j.is_object() && j.contains("logical_count")) {
      return Bad(source, "holds load statistics (logical_count), not a placement (physical_to_logical_map)");
    }
    return Bad(source, "field 'physical_to_logical_map' ([layers][physical experts]) is missing");
  }
  return ReadIndexMatrix(j.at("physical_to_logical_map"), source, "physical_to_logical_map");
}

absl::StatusOr<nlohmann::json> ExportPlacement(const IndexMatrix& phy2log, int64_t num_logical, EngineFormat format,
                                               const ExportOptions& options) {
  if (phy2log.empty() || phy2log[0].empty()) return absl::InvalidArgumentError("an empty placement cannot be exported");
  if (num_logical <= 0 || static_cast<int64_t>(phy2log[0].size()) < num_logical) {
    return absl::InvalidArgumentError(StrCat("a placement of ", phy2log[0].size(), " slots cannot hold ", num_logical, " experts"));
  }
  const int64_t rows = static_cast<int64_t>(phy2log.size());
  const int64_t total = options.total_layers > 0 ? options.total_layers : rows;
  if (options.first_layer < 0 || total > kMaxLayers || options.first_layer + rows > total) {
    return absl::InvalidArgumentError(StrCat("the placement's ", rows, " layers from layer ", options.first_layer,
                                             " do not fit in ", total, " exported layers"));
  }
  const size_t slots = phy2log[0].size();
  IndexMatrix out(total, std::vector<int64_t>(slots));
  for (int64_t l = 0; l < total; ++l) {
    const int64_t src = l - options.first_layer;
    std::vector<bool> held(num_logical, false);
    for (size_t s = 0; s < slots; ++s) {
      if (src < 0 || src >= rows) {
        out[l][s] = static_cast<int64_t>(s) % num_logical;
        continue;
      }
      if (phy2log[src].size() != slots || phy2log[src][s] < 0 || phy2log[src][s] >= num_logical) {
        return absl::InvalidArgumentError(StrCat("layer ", src, " of the placement is not ", slots, " slots of experts in [0, ",
                                                 num_logical, ")"));
      }
      out[l][s] = phy2log[src][s];
      held[out[l][s]] = true;
    }
    // Both engines route every logical expert to one of its slots.
    for (int64_t e = 0; src >= 0 && src < rows && e < num_logical; ++e) {
      if (!held[e]) return absl::InvalidArgumentError(StrCat("layer ", src, " of the placement holds no replica of expert ", e));
    }
  }
  json j;
  switch (format) {
    case EngineFormat::kSglang:
      // Only this key: SGLang passes the file's keys to init_by_mapping as
      // keyword arguments, and it takes no other.
      j["physical_to_logical_map"] = out;
      return j;
    case EngineFormat::kVllm: {
      EplbPlacement full = FromPhy2Log(out, num_logical);
      j["physical_to_logical_map"] = out;
      j["logical_to_physical_map"] = full.log2phy;
      j["logical_replica_count"] = full.logcnt;
      return j;
    }
    case EngineFormat::kMoex: break;
  }
  j["layers"] = json::array();
  for (const auto& row : out) j["layers"].push_back({{"phy2log", row}});
  return j;
}

}  // namespace moex::placement
