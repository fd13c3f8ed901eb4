#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/bench/bench.h"
#include "moex/bench/calibrate.h"
#include "moex/bench/report.h"
#include "moex/bench/svg_chart.h"
#include "moex/transport/inprocess_transport.h"

namespace moex::bench {
namespace {

using ::testing::HasSubstr;

TEST(SummarizeTest, MedianSpreadAndPercentiles) {
  Stat s = Summarize({5, 1, 3, 2, 4});
  EXPECT_DOUBLE_EQ(s.median, 3);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 5);
  EXPECT_DOUBLE_EQ(s.p10, 1.4);
  EXPECT_DOUBLE_EQ(s.p90, 4.6);
  EXPECT_DOUBLE_EQ(Summarize({1, 2}).median, 1.5);
  EXPECT_DOUBLE_EQ(Summarize({}).median, 0);
}

TEST(ValidatePointTest, NamesTheBadField) {
  BenchPoint p;
  EXPECT_TRUE(ValidatePoint(p).ok());
  p.top_k = 33;
  EXPECT_THAT(std::string(ValidatePoint(p).message()), HasSubstr("top_k 33"));
  p = BenchPoint{};
  p.skew = -1;
  EXPECT_THAT(std::string(ValidatePoint(p).message()), HasSubstr("skew"));
  p = BenchPoint{};
  p.tokens_per_rank = 1 << 20;
  p.hidden = 65536;
  EXPECT_THAT(std::string(ValidatePoint(p).message()), HasSubstr("over the 2^30"));
}

TEST(SweepTest, WeakKeepsTokensPerRankStrongSplitsTheTotal) {
  SweepSpec s;
  s.scaling = "weak";
  s.tokens_per_rank = {256, 512};
  s.skew = {0, 1};
  auto weak = ExpandSweep(s, 4, "mpi");
  ASSERT_TRUE(weak.ok()) << weak.status();
  ASSERT_EQ(weak->size(), 4u);
  EXPECT_EQ((*weak)[0].tokens_per_rank, 256);
  EXPECT_EQ((*weak)[3].tokens_per_rank, 512);
  EXPECT_EQ((*weak)[1].skew, 1);
  s.scaling = "strong";
  s.total_tokens = {4096};
  auto strong = ExpandSweep(s, 4, "ucx");
  ASSERT_TRUE(strong.ok());
  EXPECT_EQ((*strong)[0].tokens_per_rank, 1024);
  EXPECT_EQ((*strong)[0].transport, "ucx");
  EXPECT_THAT(std::string(ExpandSweep(s, 3, "mpi").status().message()), HasSubstr("unevenly"));
  s.scaling = "diagonal";
  EXPECT_THAT(std::string(ExpandSweep(s, 2, "mpi").status().message()), HasSubstr("--scaling 'diagonal'"));
}

TEST(SweepTest, RefusesWhatCannotRun) {
  SweepSpec s;
  s.experts = {2};
  s.top_k = {1};
  s.ranks = {1, 4};
  EXPECT_THAT(std::string(CountSweep(s).status().message()), HasSubstr("2 experts cannot be spread over 4 ranks"));
  s = SweepSpec{};
  s.transports = {"tcp"};
  EXPECT_THAT(std::string(CountSweep(s).status().message()), HasSubstr("transport 'tcp'"));
  s = SweepSpec{};
  s.hidden = {};
  EXPECT_THAT(std::string(CountSweep(s).status().message()), HasSubstr("--hidden is empty"));
  s = SweepSpec{};
  s.ranks = {1, 2, 4};
  EXPECT_EQ(*CountSweep(s), 3);
}

BenchResult Result(int64_t ranks, double layer_us, const std::string& scaling = "weak") {
  BenchResult r;
  r.point.ranks = ranks;
  r.point.transport = "mpi";
  r.point.scaling = scaling;
  r.point.tokens_per_rank = scaling == "strong" ? 4096 / ranks : 1024;
  r.path = "shared memory";
  r.reps = 3;
  r.ours_us = Summarize({100.0 * ranks});
  r.baseline_us = Summarize({90.0 * ranks});
  r.ratio = Summarize({1.1});
  r.ratio_of_medians = ranks > 1 ? 100.0 / 90.0 : 0.0;
  r.layer_us = Summarize({layer_us});
  r.layer_baseline_us = Summarize({layer_us});
  r.layer_ratio = Summarize({1.0});
  r.dispatch_bytes_per_rank = 1e6 * ranks;
  r.rank_imbalance = 1.1;
  return r;
}

TEST(ScalingEfficiencyTest, WeakAndStrong) {
  std::vector<BenchResult> weak = {Result(1, 100), Result(2, 125), Result(4, 200)};
  std::vector<double> e = ScalingEfficiency(weak);
  EXPECT_DOUBLE_EQ(e[0], 1.0);
  EXPECT_DOUBLE_EQ(e[1], 0.8);
  EXPECT_DOUBLE_EQ(e[2], 0.5);
  // Strong: 4096 tokens in 400 us on one rank, in 200 us on 4: 400 / (200 x 4).
  std::vector<BenchResult> strong = {Result(1, 400, "strong"), Result(4, 200, "strong")};
  e = ScalingEfficiency(strong);
  EXPECT_DOUBLE_EQ(e[1], 0.5);
}

TEST(ReportTest, JsonRoundTripsAndNamesAMissingField) {
  BenchResult r = Result(2, 150);
  r.point.skew = 1.2;
  r.route_us = 3;
  r.expert_us = 140;
  absl::StatusOr<BenchResult> back = FromJson(ToJson(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->point.ranks, 2);
  EXPECT_DOUBLE_EQ(back->point.skew, 1.2);
  EXPECT_DOUBLE_EQ(back->layer_us.median, 150);
  EXPECT_DOUBLE_EQ(back->expert_us, 140);
  nlohmann::json j = ToJson(r);
  j.erase("hidden");
  EXPECT_THAT(std::string(FromJson(j).status().message()), HasSubstr("missing field 'hidden'"));
  j = ToJson(r);
  j["ratio"]["median"] = "fast";
  EXPECT_THAT(std::string(FromJson(j).status().message()), HasSubstr("'median' has the wrong type"));
}

// The ratio tables print is the median time over the median time, not the
// median of the per-repetition ratios (which reads better when the two
// sides' slow repetitions do not coincide); both are kept, named apart, and
// a result written before the ratio of medians existed gets it from its
// medians.
TEST(ReportTest, RatioOfMediansIsNotTheMedianOfRatios) {
  BenchResult r = Result(2, 150);
  // Per repetition: ours 100, 200, 300 against 250, 100, 280: ratios 0.4, 2, 1.07.
  r.ours_us = Summarize({100, 200, 300});
  r.baseline_us = Summarize({250, 100, 280});
  r.ratio = Summarize({100.0 / 250, 200.0 / 100, 300.0 / 280});
  r.ratio_of_medians = r.ours_us.median / r.baseline_us.median;
  EXPECT_NEAR(r.ratio.median, 1.0714, 1e-3);
  EXPECT_DOUBLE_EQ(r.ratio_of_medians, 0.8);
  nlohmann::json j = ToJson(r);
  EXPECT_DOUBLE_EQ(j["ratio_of_medians"].get<double>(), 0.8);
  EXPECT_THAT(ToCsv({r}), HasSubstr(",0.8000,1.0714,"));
  j.erase("ratio_of_medians");
  j.erase("layer_ratio_of_medians");
  absl::StatusOr<BenchResult> old = FromJson(j);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_DOUBLE_EQ(old->ratio_of_medians, 0.8);
  EXPECT_DOUBLE_EQ(old->layer_ratio_of_medians, 1.0);
  EXPECT_THAT(SummaryLine(*old), HasSubstr("ratio of medians 0.80"));
}

// Across hosts: the internode bytes and the hierarchical path's figures
// round-trip too; results without them (one host) read as before.
TEST(ReportTest, HierarchicalFiguresRoundTrip) {
  BenchResult r = Result(8, 150);
  r.hosts = 4;
  r.internode_bytes_per_rank = 3e6;
  r.internode_floor_bytes_per_rank = 2e6;
  r.has_hierarchical = true;
  r.hier_us = Summarize({80, 90, 100});
  r.hier_vs_flat = Summarize({0.6, 0.7});
  r.hier_internode_bytes_per_rank = 2.1e6;
  absl::StatusOr<BenchResult> back = FromJson(ToJson(r));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->hosts, 4);
  EXPECT_TRUE(back->has_hierarchical);
  EXPECT_DOUBLE_EQ(back->hier_us.median, 90);
  EXPECT_DOUBLE_EQ(back->hier_vs_flat.median, 0.65);
  EXPECT_DOUBLE_EQ(back->hier_internode_bytes_per_rank, 2.1e6);
  EXPECT_DOUBLE_EQ(back->internode_floor_bytes_per_rank, 2e6);
  absl::StatusOr<BenchResult> one_host = FromJson(ToJson(Result(2, 150)));
  ASSERT_TRUE(one_host.ok()) << one_host.status();
  EXPECT_EQ(one_host->hosts, 1);
  EXPECT_FALSE(one_host->has_hierarchical);
  const std::string csv = ToCsv({r});
  EXPECT_THAT(csv, HasSubstr("hier_vs_flat"));
  EXPECT_THAT(csv, HasSubstr(",4,3000000,2000000,90.00,"));
}

TEST(ReportTest, WritesJsonCsvAndPlotsAndReadsThemBack) {
  std::string dir = ::testing::TempDir() + "/moex_bench_report";
  std::filesystem::remove_all(dir);
  std::vector<BenchResult> results = {Result(1, 100), Result(2, 125), Result(4, 200)};
  absl::StatusOr<std::vector<std::string>> written = WriteReport(results, dir);
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->size(), 6u);  // json, csv, md, latency, bandwidth, efficiency
  std::ifstream md(dir + "/results.md");
  std::string md_text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_THAT(md_text, HasSubstr("| ratio of medians |"));
  // Medians with p10-p90, the ratio of the medians (200 / 180), the path.
  EXPECT_THAT(md_text, HasSubstr("| mpi | shared memory | 2 | 1024 | 1024 | 4 of 32 | 0 | 200 (200-200) | 180 (180-180) | 1.11 |"));
  EXPECT_THAT(md_text, HasSubstr("| mpi | shared memory | 1 | 1024 | 1024 | 4 of 32 | 0 | 100 (100-100) | - | - | - |"));
  std::ifstream csv(dir + "/results.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_THAT(header, HasSubstr("scaling_efficiency"));
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 3);
  absl::StatusOr<std::vector<BenchResult>> back = ReadResults(dir + "/results.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->size(), 3u);
  // JSON lines, as `moex bench run --out` appends them; a broken line is named.
  {
    std::ofstream lines(dir + "/raw.jsonl");
    lines << ToJson(results[0]).dump() << "\n" << ToJson(results[1]).dump() << "\n{\"ranks\": \n";
  }
  EXPECT_THAT(std::string(ReadResults(dir + "/raw.jsonl").status().message()), HasSubstr("raw.jsonl:3: not JSON"));
  EXPECT_EQ(ReadResults(dir + "/missing.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(SvgChartTest, DrawsEverySeriesAndEscapesLabels) {
  Chart c;
  c.title = "a <title> & more";
  c.log2_x = true;
  c.series = {{"one", {{1, 10}, {2, 20}, {4, 30}}}, {"two", {{1, 5}, {4, 6}}}};
  std::string svg = RenderSvg(c);
  EXPECT_THAT(svg, HasSubstr("<svg"));
  EXPECT_THAT(svg, HasSubstr("a &lt;title&gt; &amp; more"));
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
  EXPECT_EQ(polylines, 2u);
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_THAT(RenderSvg(Chart{}), HasSubstr("</svg>"));  // empty: still a valid picture
}

// Results that follow the model's own law exactly: the fit recovers the law
// and predicts the held-out points within sampling noise.
TEST(CalibrateTest, RecoversALinearLinkAndPredictsHeldOutPoints) {
  const double latency_us = 20, gbps = 4, tflops = 0.05;
  std::vector<BenchResult> results;
  for (int64_t ranks : {2, 4, 8}) {
    for (int64_t tokens : {256, 1024}) {
      BenchResult r;
      r.point.ranks = ranks;
      r.point.tokens_per_rank = tokens;
      r.point.hidden = 512;
      r.point.top_k = 4;
      r.point.experts = 32;
      r.point.expert_width = 128;
      r.point.layer = true;
      r.rank_imbalance = 1.0;
      // Distinct remote ranks per token for top-4 of 32 over `ranks`, as the
      // model samples them; approximate here by the expectation.
      const double per_rank = static_cast<double>(r.point.experts) / ranks;
      double p_none = 1;
      for (int j = 0; j < 4; ++j) p_none *= (r.point.experts - per_rank - j) / (r.point.experts - j);
      const double remote = (ranks - 1) * (1 - p_none);
      r.dispatch_bytes_per_rank = tokens * remote * 512 * 4;
      r.combine_bytes_per_rank = r.dispatch_bytes_per_rank;
      r.dispatch_us = Summarize({latency_us + r.dispatch_bytes_per_rank / (gbps * 1e3)});
      r.combine_us = r.dispatch_us;
      r.expert_us = tokens * 4 * 6.0 * 512 * 128 / (tflops * 1e6);
      r.layer_us = Summarize({r.dispatch_us.median * 2 + r.expert_us});
      results.push_back(r);
    }
  }
  CalibrationOptions o;
  o.fit_ranks = {2, 8};
  absl::StatusOr<Calibration> c = Calibrate(results, o);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->profile.nvlink_gbps, gbps, 0.05 * gbps);
  EXPECT_NEAR(c->profile.nvlink_latency_us, latency_us, 2);
  EXPECT_NEAR(c->profile.fp32_tflops, tflops, 0.01 * tflops);
  EXPECT_EQ(c->fit_points, 4);
  ASSERT_EQ(c->held_out.size(), 2u);  // the 4-rank points
  EXPECT_LT(c->dispatch_error, 0.05);
  EXPECT_LT(c->expert_error, 0.05);
  EXPECT_LT(c->layer_error, 0.05);
  // The profile is one `moex plan --perf --cluster` reads back.
  std::string path = ::testing::TempDir() + "/moex_calibrated.json";
  std::ofstream(path) << ProfileJson(c->profile).dump();
  absl::StatusOr<plan::ClusterProfile> loaded = plan::LoadProfile(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_DOUBLE_EQ(loaded->fp32_tflops, c->profile.fp32_tflops);

  o.fit_ranks = {16};
  EXPECT_THAT(std::string(Calibrate(results, o).status().message()), HasSubstr("at least 2 fit points"));
}

// Points across hosts that follow the network law exactly: the fit recovers
// the NIC's rate and latency, and the plan model, with its own sample of
// how many hosts a token reaches, predicts the held-out point.
TEST(CalibrateInternodeTest, RecoversTheNetworkAndPredictsHeldOutPoints) {
  const double latency_us = 300, gbps = 0.25;
  std::vector<BenchResult> results;
  for (int64_t tokens : {256, 512, 1024}) {
    BenchResult r;
    r.point.ranks = 8;
    r.point.tokens_per_rank = tokens;
    r.point.hidden = 2048;
    r.point.top_k = 8;
    r.point.experts = 64;
    r.point.expert_width = 256;
    r.hosts = 4;
    r.has_hierarchical = true;
    r.rank_imbalance = 1.0;
    // 16 experts a host: the chance a token's top-8 misses a given host.
    double p_none = 1;
    for (int j = 0; j < 8; ++j) p_none *= (48.0 - j) / (64.0 - j);
    const double remote_hosts = 3 * (1 - p_none);
    r.hier_internode_bytes_per_rank = 2 * tokens * remote_hosts * 2048 * 4;  // dispatch + combine
    r.hier_us = Summarize({2 * latency_us + r.hier_internode_bytes_per_rank / (gbps * 1e3)});
    results.push_back(r);
  }
  BenchResult one_host = results[0];  // not across hosts: left out
  one_host.hosts = 1;
  one_host.has_hierarchical = false;
  results.push_back(one_host);
  CalibrationOptions o;
  o.fit_tokens = {256, 1024};
  absl::StatusOr<plan::ClusterProfile> base = plan::BuiltinProfile("h100");
  ASSERT_TRUE(base.ok());
  absl::StatusOr<InternodeCalibration> c = CalibrateInternode(results, o, *base);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->fit_points, 2);
  EXPECT_EQ(c->profile.gpus_per_node, 2);
  EXPECT_NEAR(c->profile.nic_gbps, gbps, 0.01 * gbps);
  EXPECT_NEAR(c->profile.nic_latency_us, latency_us, 1);
  ASSERT_EQ(c->held_out.size(), 1u);
  EXPECT_EQ(c->held_out[0].point.tokens_per_rank, 512);
  EXPECT_LT(c->error, 0.05) << "model " << c->held_out[0].model_us << " us, measured " << c->held_out[0].measured_us;
  EXPECT_NEAR(c->held_out[0].model_internode_bytes, c->held_out[0].internode_bytes,
              0.05 * c->held_out[0].internode_bytes);

  o.fit_tokens = {256};
  EXPECT_THAT(std::string(CalibrateInternode(results, o, *base).status().message()), HasSubstr("at least 2 fit points"));
  results[1].hosts = 8;  // a different layout
  o.fit_tokens = {};
  EXPECT_THAT(std::string(CalibrateInternode(results, o, *base).status().message()),
              HasSubstr("different ranks per host"));
}

// The measurement itself on in-process ranks, the transport's own
// all-to-all-v standing in for MPI_Alltoallv.
TEST(RunPointTest, MeasuresEveryFigureOnEveryRankAlike) {
  const int world = 3;
  transport::InProcessHub hub(world);
  std::vector<absl::StatusOr<BenchResult>> results(world, absl::UnknownError("not run"));
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      std::unique_ptr<transport::Transport> t = hub.Connect(r);
      AllToAllVFn plain = [&](const std::byte* send, std::span<const int64_t> send_bytes, std::byte* recv,
                              std::span<const int64_t> recv_bytes) {
        return t->AllToAllV(send, send_bytes, recv, recv_bytes, Deadline::InSeconds(30));
      };
      BenchPoint p;
      p.tokens_per_rank = 40;
      p.hidden = 32;
      p.top_k = 2;
      p.experts = 6;
      p.expert_width = 16;
      p.skew = 1.0;
      RunOptions o;
      o.warmup = 1;
      o.reps = 3;
      results[r] = RunPoint(*t, plain, p, o);
    });
  }
  for (std::thread& t : ranks) t.join();
  for (int r = 0; r < world; ++r) ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
  const BenchResult& r0 = *results[0];
  EXPECT_EQ(r0.point.ranks, world);
  EXPECT_EQ(r0.point.transport, "inproc");
  EXPECT_GT(r0.dispatch_us.median, 0);
  EXPECT_GT(r0.baseline_us.median, 0);
  EXPECT_GT(r0.layer_us.median, 0);
  EXPECT_GT(r0.expert_us, 0);
  EXPECT_GE(r0.rank_imbalance, 1.0);
  EXPECT_EQ(r0.path, "shared memory");  // every rank on this host: the rows go through /dev/shm
  EXPECT_DOUBLE_EQ(r0.ratio_of_medians, r0.ours_us.median / r0.baseline_us.median);
  EXPECT_GE(r0.minor_faults_per_rep, 0);
  EXPECT_DOUBLE_EQ(FromJson(ToJson(r0))->minor_faults_per_rep, r0.minor_faults_per_rep);
  // Dispatch moves at least the floor, and only the floor plus each record's
  // (slot, weight) pairs.
  EXPECT_GE(r0.dispatch_bytes_per_rank, r0.floor_bytes_per_rank);
  EXPECT_LE(r0.dispatch_bytes_per_rank, r0.floor_bytes_per_rank * (32.0 + 2 * 2) / 32.0 + 1);
  // Every rank reports the slowest rank's figures: the same numbers.
  for (int r = 1; r < world; ++r) {
    EXPECT_DOUBLE_EQ(results[r]->ours_us.median, r0.ours_us.median);
    EXPECT_DOUBLE_EQ(results[r]->layer_us.median, r0.layer_us.median);
  }
}

TEST(RunPointTest, RefusesMoreRanksThanExperts) {
  transport::InProcessHub hub(1);
  std::unique_ptr<transport::Transport> t = hub.Connect(0);
  BenchPoint p;
  p.experts = 1;
  p.top_k = 1;
  AllToAllVFn none = [](const std::byte*, std::span<const int64_t>, std::byte*, std::span<const int64_t>) {
    return absl::OkStatus();
  };
  EXPECT_TRUE(RunPoint(*t, none, p, RunOptions{.warmup = 0, .reps = 1, .seed = 1, .rep_timeout_seconds = 5}).ok());
  RunOptions bad;
  bad.reps = 0;
  EXPECT_THAT(std::string(RunPoint(*t, none, p, bad).status().message()), HasSubstr("reps 0"));
}

}  // namespace
}  // namespace moex::bench
