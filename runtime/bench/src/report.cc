#include "moex/bench/report.h"
#include "moex/core/provenance.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_format.h"
#include "moex/bench/svg_chart.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::bench {
namespace {

nlohmann::json StatJson(const Stat& s) {
  return {{"median", s.median}, {"min", s.min}, {"max", s.max}, {"p10", s.p10}, {"p90", s.p90}};
}

// Reads `j[key]` as T; the error names the field.
template <typename T>
absl::Status Get(const nlohmann::json& j, const char* key, T* out) {
  if (!j.contains(key)) return absl::InvalidArgumentError(StrCat("bench result: missing field '", key, "'"));
  try {
    *out = j.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    return absl::InvalidArgumentError(StrCat("bench result: field '", key, "' has the wrong type"));
  }
  return absl::OkStatus();
}

absl::Status GetStat(const nlohmann::json& j, const char* key, Stat* s) {
  nlohmann::json o;
  MOEX_RETURN_IF_ERROR(Get(j, key, &o));
  if (!o.is_object()) return absl::InvalidArgumentError(StrCat("bench result: field '", key, "' is not an object"));
  for (auto [name, value] : std::initializer_list<std::pair<const char*, double*>>{
           {"median", &s->median}, {"min", &s->min}, {"max", &s->max}, {"p10", &s->p10}, {"p90", &s->p90}}) {
    absl::Status got = Get(o, name, value);
    if (!got.ok()) return absl::InvalidArgumentError(StrCat(got.message(), " of '", key, "'"));
  }
  return absl::OkStatus();
}

// Everything that makes two results the same series but the rank count
// (and the tokens per rank the scaling rule derives from it).
std::string SeriesKey(const BenchResult& r) {
  const BenchPoint& p = r.point;
  std::string tokens = p.scaling == "strong" ? StrCat("total tokens ", p.tokens_per_rank * p.ranks)
                                             : StrCat(p.tokens_per_rank, " tok/rank");
  return absl::StrFormat("%s %s, H %d, top-%d/%d, F %d, skew %g", p.transport, tokens, p.hidden, p.top_k, p.experts,
                         p.expert_width, p.skew);
}

double ScalingTime(const BenchResult& r) { return r.point.layer ? r.layer_us.median : r.ours_us.median; }

}  // namespace

nlohmann::json ToJson(const BenchResult& r) {
  const BenchPoint& p = r.point;
  nlohmann::json j = {
      {"ranks", p.ranks}, {"tokens_per_rank", p.tokens_per_rank}, {"hidden", p.hidden}, {"top_k", p.top_k},
      {"experts", p.experts}, {"expert_width", p.expert_width}, {"skew", p.skew}, {"layer", p.layer},
      {"transport", p.transport}, {"scaling", p.scaling}, {"path", r.path}, {"reps", r.reps}, {"warmup", r.warmup},
      {"dispatch_us", StatJson(r.dispatch_us)}, {"combine_us", StatJson(r.combine_us)},
      {"ours_us", StatJson(r.ours_us)}, {"baseline_us", StatJson(r.baseline_us)}, {"ratio", StatJson(r.ratio)},
      {"ratio_of_medians", r.ratio_of_medians},
      {"dispatch_bytes_per_rank", r.dispatch_bytes_per_rank}, {"combine_bytes_per_rank", r.combine_bytes_per_rank},
      {"floor_bytes_per_rank", r.floor_bytes_per_rank}, {"dispatch_gbps", r.dispatch_gbps},
      {"combine_gbps", r.combine_gbps}, {"baseline_gbps", r.baseline_gbps}, {"rank_imbalance", r.rank_imbalance},
      {"minor_faults_per_rep", r.minor_faults_per_rep}};
  if (r.hosts > 1) {
    j["hosts"] = r.hosts;
    j["internode_bytes_per_rank"] = r.internode_bytes_per_rank;
    j["internode_floor_bytes_per_rank"] = r.internode_floor_bytes_per_rank;
  }
  if (r.has_hierarchical) {
    j["hierarchical"] = {{"dispatch_us", StatJson(r.hier_dispatch_us)}, {"combine_us", StatJson(r.hier_combine_us)},
                         {"ours_us", StatJson(r.hier_us)}, {"vs_flat", StatJson(r.hier_vs_flat)},
                         {"vs_baseline", StatJson(r.hier_vs_baseline)},
                         {"vs_flat_of_medians", r.hier_vs_flat_of_medians},
                         {"vs_baseline_of_medians", r.hier_vs_baseline_of_medians},
                         {"internode_bytes_per_rank", r.hier_internode_bytes_per_rank}};
  }
  if (p.layer) {
    j["layer_us"] = StatJson(r.layer_us);
    j["layer_baseline_us"] = StatJson(r.layer_baseline_us);
    j["layer_ratio"] = StatJson(r.layer_ratio);
    j["layer_ratio_of_medians"] = r.layer_ratio_of_medians;
    j["route_us"] = r.route_us;
    j["expert_us"] = r.expert_us;
  }
  return j;
}

absl::StatusOr<BenchResult> FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("bench result: not a JSON object");
  BenchResult r;
  BenchPoint& p = r.point;
  MOEX_RETURN_IF_ERROR(Get(j, "ranks", &p.ranks));
  MOEX_RETURN_IF_ERROR(Get(j, "tokens_per_rank", &p.tokens_per_rank));
  MOEX_RETURN_IF_ERROR(Get(j, "hidden", &p.hidden));
  MOEX_RETURN_IF_ERROR(Get(j, "top_k", &p.top_k));
  MOEX_RETURN_IF_ERROR(Get(j, "experts", &p.experts));
  MOEX_RETURN_IF_ERROR(Get(j, "expert_width", &p.expert_width));
  MOEX_RETURN_IF_ERROR(Get(j, "skew", &p.skew));
  MOEX_RETURN_IF_ERROR(Get(j, "layer", &p.layer));
  MOEX_RETURN_IF_ERROR(Get(j, "transport", &p.transport));
  MOEX_RETURN_IF_ERROR(Get(j, "scaling", &p.scaling));
  MOEX_RETURN_IF_ERROR(Get(j, "path", &r.path));
  MOEX_RETURN_IF_ERROR(Get(j, "reps", &r.reps));
  MOEX_RETURN_IF_ERROR(Get(j, "warmup", &r.warmup));
  MOEX_RETURN_IF_ERROR(GetStat(j, "dispatch_us", &r.dispatch_us));
  MOEX_RETURN_IF_ERROR(GetStat(j, "combine_us", &r.combine_us));
  MOEX_RETURN_IF_ERROR(GetStat(j, "ours_us", &r.ours_us));
  MOEX_RETURN_IF_ERROR(GetStat(j, "baseline_us", &r.baseline_us));
  MOEX_RETURN_IF_ERROR(GetStat(j, "ratio", &r.ratio));
  // Ratios of medians: written since 2026-12; before, computed from the medians.
  auto of_medians = [](double num, double den) { return den > 0 ? num / den : 0.0; };
  r.ratio_of_medians = p.ranks > 1 ? of_medians(r.ours_us.median, r.baseline_us.median) : 0.0;
  if (j.contains("ratio_of_medians")) MOEX_RETURN_IF_ERROR(Get(j, "ratio_of_medians", &r.ratio_of_medians));
  MOEX_RETURN_IF_ERROR(Get(j, "dispatch_bytes_per_rank", &r.dispatch_bytes_per_rank));
  MOEX_RETURN_IF_ERROR(Get(j, "combine_bytes_per_rank", &r.combine_bytes_per_rank));
  MOEX_RETURN_IF_ERROR(Get(j, "floor_bytes_per_rank", &r.floor_bytes_per_rank));
  MOEX_RETURN_IF_ERROR(Get(j, "dispatch_gbps", &r.dispatch_gbps));
  MOEX_RETURN_IF_ERROR(Get(j, "combine_gbps", &r.combine_gbps));
  MOEX_RETURN_IF_ERROR(Get(j, "baseline_gbps", &r.baseline_gbps));
  MOEX_RETURN_IF_ERROR(Get(j, "rank_imbalance", &r.rank_imbalance));
  if (j.contains("minor_faults_per_rep")) MOEX_RETURN_IF_ERROR(Get(j, "minor_faults_per_rep", &r.minor_faults_per_rep));
  if (j.contains("hosts")) {
    MOEX_RETURN_IF_ERROR(Get(j, "hosts", &r.hosts));
    MOEX_RETURN_IF_ERROR(Get(j, "internode_bytes_per_rank", &r.internode_bytes_per_rank));
    MOEX_RETURN_IF_ERROR(Get(j, "internode_floor_bytes_per_rank", &r.internode_floor_bytes_per_rank));
  }
  if (j.contains("hierarchical")) {
    const nlohmann::json& h = j["hierarchical"];
    r.has_hierarchical = true;
    MOEX_RETURN_IF_ERROR(GetStat(h, "dispatch_us", &r.hier_dispatch_us));
    MOEX_RETURN_IF_ERROR(GetStat(h, "combine_us", &r.hier_combine_us));
    MOEX_RETURN_IF_ERROR(GetStat(h, "ours_us", &r.hier_us));
    MOEX_RETURN_IF_ERROR(GetStat(h, "vs_flat", &r.hier_vs_flat));
    MOEX_RETURN_IF_ERROR(GetStat(h, "vs_baseline", &r.hier_vs_baseline));
    MOEX_RETURN_IF_ERROR(Get(h, "internode_bytes_per_rank", &r.hier_internode_bytes_per_rank));
    r.hier_vs_flat_of_medians = of_medians(r.hier_us.median, r.ours_us.median);
    r.hier_vs_baseline_of_medians = of_medians(r.hier_us.median, r.baseline_us.median);
    if (h.contains("vs_flat_of_medians")) MOEX_RETURN_IF_ERROR(Get(h, "vs_flat_of_medians", &r.hier_vs_flat_of_medians));
    if (h.contains("vs_baseline_of_medians")) {
      MOEX_RETURN_IF_ERROR(Get(h, "vs_baseline_of_medians", &r.hier_vs_baseline_of_medians));
    }
  }
  if (p.layer) {
    MOEX_RETURN_IF_ERROR(GetStat(j, "layer_us", &r.layer_us));
    MOEX_RETURN_IF_ERROR(GetStat(j, "layer_baseline_us", &r.layer_baseline_us));
    MOEX_RETURN_IF_ERROR(GetStat(j, "layer_ratio", &r.layer_ratio));
    r.layer_ratio_of_medians = of_medians(r.layer_us.median, r.layer_baseline_us.median);
    if (j.contains("layer_ratio_of_medians")) {
      MOEX_RETURN_IF_ERROR(Get(j, "layer_ratio_of_medians", &r.layer_ratio_of_medians));
    }
    MOEX_RETURN_IF_ERROR(Get(j, "route_us", &r.route_us));
    MOEX_RETURN_IF_ERROR(Get(j, "expert_us", &r.expert_us));
  }
  return r;
}

std::string ToCsv(const std::vector<BenchResult>& results) {
  std::vector<double> efficiency = ScalingEfficiency(results);
  std::ostringstream csv;
  csv << "scaling,transport,path,ranks,tokens_per_rank,hidden,top_k,experts,expert_width,skew,reps,"
         "dispatch_us,combine_us,ours_us,ours_us_p10,ours_us_p90,baseline_us,baseline_us_p10,baseline_us_p90,"
         "ratio_of_medians,per_rep_ratio_median,per_rep_ratio_min,per_rep_ratio_max,dispatch_bytes_per_rank,"
         "combine_bytes_per_rank,floor_bytes_per_rank,"
         "dispatch_gbps,combine_gbps,baseline_gbps,rank_imbalance,route_us,expert_us,layer_us,layer_us_p10,"
         "layer_us_p90,layer_baseline_us,layer_ratio_of_medians,layer_per_rep_ratio_median,scaling_efficiency,hosts,"
         "internode_bytes_per_rank,internode_floor_bytes_per_rank,hier_us,hier_us_p10,hier_us_p90,"
         "hier_vs_flat_of_medians,hier_vs_flat_per_rep_p10,hier_vs_flat_per_rep_p90,hier_vs_baseline_of_medians,"
         "hier_internode_bytes_per_rank,minor_faults_per_rep\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const BenchResult& r = results[i];
    const BenchPoint& p = r.point;
    csv << absl::StrFormat("%s,%s,%s,%d,%d,%d,%d,%d,%d,%g,%d,", p.scaling, p.transport, r.path, p.ranks,
                           p.tokens_per_rank, p.hidden, p.top_k, p.experts, p.expert_width, p.skew, r.reps);
    csv << absl::StrFormat("%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.4f,%.4f,%.4f,%.4f,%.0f,%.0f,%.0f,%.4f,%.4f,%.4f,"
                           "%.4f,",
                           r.dispatch_us.median, r.combine_us.median, r.ours_us.median, r.ours_us.p10, r.ours_us.p90,
                           r.baseline_us.median, r.baseline_us.p10, r.baseline_us.p90, r.ratio_of_medians,
                           r.ratio.median, r.ratio.min, r.ratio.max, r.dispatch_bytes_per_rank,
                           r.combine_bytes_per_rank, r.floor_bytes_per_rank, r.dispatch_gbps, r.combine_gbps,
                           r.baseline_gbps, r.rank_imbalance);
    if (p.layer) {
      csv << absl::StrFormat("%.2f,%.2f,%.2f,%.2f,%.2f,%.2f,%.4f,%.4f,", r.route_us, r.expert_us, r.layer_us.median,
                             r.layer_us.p10, r.layer_us.p90, r.layer_baseline_us.median, r.layer_ratio_of_medians,
                             r.layer_ratio.median);
    } else {
      csv << ",,,,,,,,";
    }
    csv << (efficiency[i] > 0 ? absl::StrFormat("%.4f", efficiency[i]) : "") << ",";
    csv << absl::StrFormat("%d,%.0f,%.0f,", r.hosts, r.internode_bytes_per_rank, r.internode_floor_bytes_per_rank);
    if (r.has_hierarchical) {
      csv << absl::StrFormat("%.2f,%.2f,%.2f,%.4f,%.4f,%.4f,%.4f,%.0f", r.hier_us.median, r.hier_us.p10, r.hier_us.p90,
                             r.hier_vs_flat_of_medians, r.hier_vs_flat.p10, r.hier_vs_flat.p90,
                             r.hier_vs_baseline_of_medians, r.hier_internode_bytes_per_rank);
    } else {
      csv << ",,,,,,,";
    }
    csv << absl::StrFormat(",%.2f\n", r.minor_faults_per_rep);
  }
  return csv.str();
}

std::string ToMarkdown(const std::vector<BenchResult>& results) {
  std::vector<double> efficiency = ScalingEfficiency(results);
  auto spread = [](const Stat& s, double scale, int digits) {
    return absl::StrFormat("%.*f (%.*f-%.*f)", digits, s.median * scale, digits, s.p10 * scale, digits, s.p90 * scale);
  };
  std::string md =
      "| transport | path | ranks | tok/rank | H | top-k of E | skew | dispatch+combine µs | `MPI_Alltoallv` µs | "
      "ratio of medians | dispatch GB/s/rank | layer ms | efficiency |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const BenchResult& r = results[i];
    const BenchPoint& p = r.point;
    const bool several = p.ranks > 1;
    md += absl::StrFormat("| %s | %s | %d | %d | %d | %d of %d | %g | %s | %s | %s | %s | %s | %s |\n", p.transport,
                          r.path, p.ranks, p.tokens_per_rank, p.hidden, p.top_k, p.experts, p.skew,
                          spread(r.ours_us, 1, 0), several ? spread(r.baseline_us, 1, 0) : "-",
                          several ? absl::StrFormat("%.2f", r.ratio_of_medians) : "-",
                          several ? absl::StrFormat("%.1f", r.dispatch_gbps) : "-",
                          p.layer ? spread(r.layer_us, 1e-3, 1) : "-",
                          efficiency[i] > 0 ? absl::StrFormat("%.2f", efficiency[i]) : "-");
  }
  return md;
}

std::vector<double> ScalingEfficiency(const std::vector<BenchResult>& results) {
  std::map<std::string, const BenchResult*> base;  // series -> its smallest rank count
  for (const BenchResult& r : results) {
    const BenchResult*& b = base[SeriesKey(r)];
    if (b == nullptr || r.point.ranks < b->point.ranks) b = &r;
  }
  std::vector<double> out;
  for (const BenchResult& r : results) {
    const BenchResult* b = base[SeriesKey(r)];
    double t = ScalingTime(r), t0 = ScalingTime(*b);
    if (r.point.scaling == "grid" || !(t > 0) || !(t0 > 0)) {
      out.push_back(0);
    } else if (r.point.scaling == "strong") {
      out.push_back(t0 * static_cast<double>(b->point.ranks) / (t * static_cast<double>(r.point.ranks)));
    } else {
      out.push_back(t0 / t);
    }
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> WriteReport(const std::vector<BenchResult>& results, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::PermissionDeniedError(StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<std::string> written;
  auto write = [&](const std::string& name, const std::string& text) -> absl::Status {
    std::string path = (std::filesystem::path(dir) / name).string();
    std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << text;
      out.close();
      if (!out) return absl::DataLossError(StrCat("cannot write ", tmp));
    }
    std::filesystem::rename(tmp, path, ec);
    if (ec) return absl::DataLossError(StrCat("cannot rename ", tmp, " to ", path, ": ", ec.message()));
    written.push_back(path);
    return absl::OkStatus();
  };
  nlohmann::json all = nlohmann::json::array();
  std::vector<double> efficiency = ScalingEfficiency(results);
  for (size_t i = 0; i < results.size(); ++i) {
    nlohmann::json j = ToJson(results[i]);
    if (efficiency[i] > 0) j["scaling_efficiency"] = efficiency[i];
    all.push_back(j);
  }
  nlohmann::json results_json = {{"results", all}, {"provenance", ProvenanceJson()}};
  MOEX_RETURN_IF_ERROR(write("results.json", results_json.dump(2) + "\n"));
  MOEX_RETURN_IF_ERROR(write("results.csv", ToCsv(results)));
  MOEX_RETURN_IF_ERROR(write("results.md", ToMarkdown(results)));

  // Plots: against the rank count when there are several, else against the
  // tokens per rank.
  std::set<int64_t> rank_counts;
  for (const BenchResult& r : results) rank_counts.insert(r.point.ranks);
  const bool by_ranks = rank_counts.size() > 1;
  auto x_of = [&](const BenchResult& r) { return static_cast<double>(by_ranks ? r.point.ranks : r.point.tokens_per_rank); };
  auto key_of = [&](const BenchResult& r) {
    if (by_ranks) return SeriesKey(r);
    BenchResult copy = r;
    copy.point.tokens_per_rank = 0;
    copy.point.scaling = "grid";
    return SeriesKey(copy);
  };
  std::map<std::string, std::vector<size_t>> series;
  for (size_t i = 0; i < results.size(); ++i) series[key_of(results[i])].push_back(i);
  auto chart = [&](const std::string& title, const std::string& y_label) {
    Chart c;
    c.title = title;
    c.x_label = by_ranks ? "ranks" : "tokens per rank";
    c.y_label = y_label;
    c.log2_x = true;
    return c;
  };
  auto add = [&](Chart* c, const std::string& prefix, auto value) {
    for (auto& [key, indices] : series) {
      Series s;
      s.label = prefix + key;
      for (size_t i : indices) s.points.push_back({x_of(results[i]), value(i)});
      std::sort(s.points.begin(), s.points.end());
      c->series.push_back(std::move(s));
    }
  };
  Chart latency = chart("dispatch + combine, median (slowest rank)", "microseconds");
  add(&latency, "moex: ", [&](size_t i) { return results[i].ours_us.median; });
  add(&latency, "MPI_Alltoallv: ", [&](size_t i) { return results[i].baseline_us.median; });
  MOEX_RETURN_IF_ERROR(write("latency.svg", RenderSvg(latency)));
  Chart bandwidth = chart("dispatch bandwidth per rank (bytes sent / median time)", "GB/s");
  add(&bandwidth, "moex dispatch: ", [&](size_t i) { return results[i].dispatch_gbps; });
  add(&bandwidth, "MPI_Alltoallv: ", [&](size_t i) { return results[i].baseline_gbps; });
  MOEX_RETURN_IF_ERROR(write("bandwidth.svg", RenderSvg(bandwidth)));
  if (by_ranks) {
    Chart eff = chart("scaling efficiency (whole layer where measured)", "efficiency");
    add(&eff, "", [&](size_t i) { return efficiency[i]; });
    MOEX_RETURN_IF_ERROR(write("efficiency.svg", RenderSvg(eff)));
  }
  return written;
}

absl::StatusOr<std::vector<BenchResult>> ReadResults(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  std::vector<BenchResult> results;
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  std::vector<nlohmann::json> items;
  if (!j.is_discarded() && j.is_object() && j.contains("results") && j["results"].is_array()) {
    for (const auto& item : j["results"]) items.push_back(item);
  } else if (!j.is_discarded() && j.is_object() && j.contains("bench") && j["bench"].is_array()) {
    // A bench job's status (`moex job status ID --json`): each point carries
    // its whole record as a JSON string.
    for (const auto& point : j["bench"]) {
      if (!point.is_object() || !point.contains("json") || !point["json"].is_string()) {
        return absl::InvalidArgumentError(StrCat(path, ": a bench point without its 'json' record"));
      }
      nlohmann::json item = nlohmann::json::parse(point["json"].get<std::string>(), nullptr, false);
      if (item.is_discarded()) return absl::InvalidArgumentError(StrCat(path, ": a bench point's record is not JSON"));
      items.push_back(item);
    }
  } else {
    // JSON lines.
    std::istringstream lines(text.str());
    std::string line;
    int number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json item = nlohmann::json::parse(line, nullptr, false);
      if (item.is_discarded()) return absl::InvalidArgumentError(StrCat(path, ":", number, ": not JSON"));
      items.push_back(item);
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    absl::StatusOr<BenchResult> r = FromJson(items[i]);
    if (!r.ok()) return absl::InvalidArgumentError(StrCat(path, ": result ", i + 1, ": ", r.status().message()));
    results.push_back(*r);
  }
  return results;
}

}  // namespace moex::bench
