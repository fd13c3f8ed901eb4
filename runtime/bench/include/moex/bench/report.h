// What `moex bench` writes: results as JSON and CSV, plots as SVG, and the
// sweeps that produce them.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/bench/bench.h"
#include "nlohmann/json.hpp"

namespace moex::bench {

nlohmann::json ToJson(const BenchResult& result);
// The error names the missing or mistyped field.
absl::StatusOr<BenchResult> FromJson(const nlohmann::json& j);

// One header line and one line per result (medians and spreads, bytes,
// bandwidths, layer figures, scaling efficiency).
std::string ToCsv(const std::vector<BenchResult>& results);

// A Markdown table, one row per result, every figure named with its
// statistic: medians over the repetitions with the p10-p90 spread in
// brackets (the slowest rank's time), the ratio of the medians, the path
// the rows took. docs/ copies its rows; tests/bench checks they still follow
// from the results they came from.
std::string ToMarkdown(const std::vector<BenchResult>& results);

using job::CountSweep;
using job::ExpandSweep;
using job::SweepSpec;

// Scaling efficiency of each result against the smallest rank count of the
// same series (same transport and every other parameter but the tokens that
// the scaling rule sets), from the whole layer's median time where measured,
// else dispatch + combine: weak T(r0) / T(r); strong T(r0) r0 / (T(r) r);
// 0 where no series base exists.
std::vector<double> ScalingEfficiency(const std::vector<BenchResult>& results);

// results.json, results.csv, results.md, and latency.svg, bandwidth.svg,
// efficiency.svg (when there are several rank counts) under `dir`.
// Returns the paths written.
absl::StatusOr<std::vector<std::string>> WriteReport(const std::vector<BenchResult>& results, const std::string& dir);

// Reads results.json (as WriteReport writes it) or JSON lines.
absl::StatusOr<std::vector<BenchResult>> ReadResults(const std::string& path);

}  // namespace moex::bench
