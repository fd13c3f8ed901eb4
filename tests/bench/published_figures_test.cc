// Figures published in docs/ and kernels/README.md, recomputed from the raw
// files committed beside them. A page that no longer follows from its file
// (a re-measurement committed without updating the page, a figure edited by
// hand, a change to how a figure is computed) fails here.
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/bench/report.h"
#include "nlohmann/json.hpp"

namespace moex::bench {
namespace {

using ::testing::HasSubstr;

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Source(const std::string& relative) { return std::string(MOEX_SOURCE_DIR) + "/" + relative; }

// docs/benchmarks.md's three CPU tables are `moex bench sweep`'s own
// results.md rows (medians with p10-p90, ratio of medians, path): each row
// the results give must be on the page, as the page prints it.
TEST(PublishedFiguresTest, BenchmarksPageTablesFollowFromTheirResults) {
  const std::string page = Read(Source("docs/benchmarks.md"));
  ASSERT_FALSE(page.empty());
  for (const char* sweep : {"weak", "strong", "skew"}) {
    const std::string file = Source(std::string("docs/results/2026-12-01-bench/") + sweep + "/results.json");
    absl::StatusOr<std::vector<BenchResult>> results = ReadResults(file);
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_FALSE(results->empty()) << file;
    std::istringstream rows(ToMarkdown(*results));
    std::string row;
    int checked = 0;
    while (std::getline(rows, row)) {
      EXPECT_THAT(page, HasSubstr(row)) << sweep << ": a row its results give is not on the page";
      ++checked;
    }
    EXPECT_EQ(checked, static_cast<int>(results->size()) + 2) << sweep;  // header, rule, one row a result
  }
}

// The H200 permute figure as corrected: bytes as real traffic (T token rows
// read once, T*k permuted rows written), over the median time the run
// wrote, against the copy's bandwidth from the same file.
TEST(PublishedFiguresTest, H200PermuteCorrectionFollowsFromItsJson) {
  const nlohmann::json bench = nlohmann::json::parse(Read(Source("docs/results/2026-11-29-H200/gpu-bench.json")));
  const double tokens = bench["tokens"].get<double>(), pairs = tokens * bench["top_k"].get<double>();
  const double row = bench["hidden"].get<double>() * 2;  // bf16
  const double gbps = (tokens + pairs) * row / (bench["permute_ms"].get<double>() * 1e6);
  const double ratio = gbps / bench["permute_copy_gbps"].get<double>();
  // What the bench printed, crediting 2 x T*k rows: the figure withdrawn.
  EXPECT_NEAR(2 * pairs * row / (bench["permute_ms"].get<double>() * 1e6), bench["permute_gbps"].get<double>(), 0.1);
  EXPECT_THAT(Read(Source("kernels/README.md")),
              HasSubstr(absl::StrFormat("| permute | %.0f GB/s (reads T rows, writes T·k) | device-to-device copy, "
                                        "%.0f GB/s | %.2f |",
                                        gbps, bench["permute_copy_gbps"].get<double>(), ratio)));
  EXPECT_THAT(Read(Source("docs/results/2026-11-29-H200/README.md")),
              HasSubstr(absl::StrFormat("**corrected to %.1f GB/s, %.2f**", gbps, ratio)));
  EXPECT_THAT(Read(Source("docs/gpu.md")), HasSubstr(absl::StrFormat("**%.0f GB/s, %.2f of the copy's %.0f GB/s**",
                                                                     gbps, ratio,
                                                                     bench["permute_copy_gbps"].get<double>())));
}

}  // namespace
}  // namespace moex::bench
