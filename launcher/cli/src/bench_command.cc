#include "moex/cli/bench_command.h"
#include "moex/core/provenance.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "moex/bench/bench.h"
#include "moex/bench/calibrate.h"
#include "moex/bench/report.h"
#include "moex/cli/flag_checks.h"
#include "moex/cli/run_command.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"
#include "moex/kernels/expert_ffn.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport_registry.h"

namespace moex::cli {
namespace {

template <typename T>
absl::StatusOr<std::vector<T>> ParseList(const std::string& flag, const std::string& text) {
  std::vector<T> out;
  for (absl::string_view part : absl::StrSplit(absl::string_view(text.data(), text.size()), ',', absl::SkipEmpty())) {
    T value{};
    bool ok;
    if constexpr (std::is_same_v<T, double>) ok = absl::SimpleAtod(part, &value);
    else ok = absl::SimpleAtoi(part, &value);
    if (!ok) return absl::InvalidArgumentError(StrCat("--", flag, " '", text, "': '", part, "' is not a number"));
    out.push_back(value);
  }
  return out;
}

absl::StatusOr<bench::SweepSpec> SweepFrom(const BenchFlags& f) {
  bench::SweepSpec s;
  s.scaling = f.scaling;
  MOEX_ASSIGN_OR_RETURN(s.ranks, ParseList<int64_t>("ranks", f.ranks));
  s.transports.clear();
  for (absl::string_view t : absl::StrSplit(f.transports, ',', absl::SkipEmpty())) s.transports.emplace_back(t);
  MOEX_ASSIGN_OR_RETURN(s.tokens_per_rank, ParseList<int64_t>("tokens", f.tokens));
  MOEX_ASSIGN_OR_RETURN(s.total_tokens, ParseList<int64_t>("total-tokens", f.total_tokens));
  MOEX_ASSIGN_OR_RETURN(s.hidden, ParseList<int64_t>("hidden", f.hidden));
  MOEX_ASSIGN_OR_RETURN(s.top_k, ParseList<int64_t>("top-k", f.top_k));
  MOEX_ASSIGN_OR_RETURN(s.experts, ParseList<int64_t>("experts", f.experts));
  MOEX_ASSIGN_OR_RETURN(s.expert_width, ParseList<int64_t>("expert-width", f.expert_width));
  MOEX_ASSIGN_OR_RETURN(s.skew, ParseList<double>("skew", f.skew));
  s.layer = !f.no_layer;
  MOEX_RETURN_IF_ERROR(bench::CountSweep(s).status());
  return s;
}

// `mpirun -np N moex bench run ...`
int RunRanks(const BenchFlags& f, int* argc, char*** argv) {
  auto mpi = transport::MpiSession::Start(argc, argv);
  if (!mpi.ok()) {
    std::cerr << "moex bench: error: " << mpi.status().message() << "\n";
    return 1;
  }
  const int rank = (*mpi)->rank();
  auto fail = [&](const absl::Status& status) -> int {
    std::string line = StrCat("moex bench: rank ", rank, ": error: ", status.message(), "\n");
    (void)!write(STDERR_FILENO, line.data(), line.size());
    (*mpi)->Abort(1, 2.0);
  };
  kernels::SetBlasThreads(1);
  BenchFlags given = f;
  given.ranks = std::to_string((*mpi)->world_size());
  given.transports = f.transport;
  absl::StatusOr<bench::SweepSpec> sweep = SweepFrom(given);
  if (!sweep.ok()) return fail(sweep.status());
  absl::StatusOr<std::vector<bench::BenchPoint>> points = bench::ExpandSweep(*sweep, (*mpi)->world_size(), f.transport);
  if (!points.ok()) return fail(points.status());
  absl::StatusOr<std::unique_ptr<transport::Transport>> t = transport::CreateTransport(f.transport);
  if (!t.ok()) return fail(t.status());
  std::ofstream out;
  if (rank == 0 && !f.out.empty()) {
    out.open(f.out, std::ios::app);
    if (!out) return fail(absl::PermissionDeniedError(StrCat("cannot write ", f.out)));
  }
  bench::RunOptions options;
  options.warmup = f.warmup;
  options.reps = f.reps;
  options.seed = f.seed;
  options.rep_timeout_seconds = f.timeout;
  absl::Status ran = bench::RunPoints(**t, *points, options, [&](const bench::BenchResult& r, size_t i) -> absl::Status {
    if (rank != 0) return absl::OkStatus();
    nlohmann::json line = bench::ToJson(r);
    line["provenance"] = ProvenanceJson({static_cast<int>(r.point.ranks), r.point.transport, ""});
    if (out.is_open()) {
      out << line.dump() << std::endl;  // a line per point, flushed: nothing measured is lost
      if (!out) return absl::DataLossError(StrCat("cannot write ", f.out));
    } else {
      std::cout << line.dump() << std::endl;
    }
    std::cerr << absl::StrFormat("moex bench: [%d/%d] %s (%s path): %s\n", i + 1, points->size(), bench::DescribePoint(r.point),
                                 r.path, bench::SummaryLine(r));
    return absl::OkStatus();
  });
  if (!ran.ok()) return fail(ran);
  t->reset();
  return 0;
}

int64_t CountLines(const std::string& path) {
  std::ifstream in(path);
  int64_t n = 0;
  std::string line;
  while (std::getline(in, line)) n += line.empty() ? 0 : 1;
  return n;
}

std::string LastLines(const std::string& path, int count) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(line);
    if (static_cast<int>(lines.size()) > count) lines.erase(lines.begin());
  }
  std::string out;
  for (const std::string& l : lines) out += "\n    " + l;
  return out;
}

void ProgressBar(int64_t done, int64_t total, double elapsed, const std::string& what) {
  const int width = 30;
  int filled = total > 0 ? static_cast<int>(width * done / total) : 0;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, '.');
  std::string eta = done > 0 && done < total ? absl::StrFormat(", about %.0f s left", elapsed / done * (total - done)) : "";
  bool tty = isatty(STDERR_FILENO);
  std::cerr << (tty ? "\r" : "") << absl::StrFormat("moex bench: [%s] %d/%d points, %.0f s%s  %s", bar, done, total,
                                                   elapsed, eta, what)
            << (tty ? "\033[K" : "\n") << std::flush;
}

// `moex bench sweep`: one mpirun per (rank count, transport).
int RunSweep(const BenchFlags& f) {
  absl::StatusOr<bench::SweepSpec> sweep = SweepFrom(f);
  absl::StatusOr<int64_t> total = sweep.ok() ? bench::CountSweep(*sweep) : absl::StatusOr<int64_t>(sweep.status());
  if (!total.ok()) {
    std::cerr << "moex bench: error: " << total.status().message() << "\n";
    return 2;
  }
  const std::string dir = f.out.empty() ? "bench-results" : f.out;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(dir) / "raw", ec);
  if (ec) {
    std::cerr << "moex bench: error: cannot create " << dir << "/raw: " << ec.message() << "\n";
    return 1;
  }
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec) self = "moex";
  std::vector<std::string> mpirun_args;
  for (absl::string_view a : absl::StrSplit(f.mpirun_args, ' ', absl::SkipEmpty())) mpirun_args.emplace_back(a);
  auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  int64_t done_before = 0;
  std::vector<bench::BenchResult> results;
  for (int64_t ranks : sweep->ranks) {
    for (const std::string& transport : sweep->transports) {
      const std::string stem = StrCat("ranks", ranks, "-", transport);
      const std::string raw = (std::filesystem::path(dir) / "raw" / (stem + ".jsonl")).string();
      const std::string log = (std::filesystem::path(dir) / "raw" / (stem + ".log")).string();
      std::filesystem::remove(raw, ec);
      SpawnOptions spawn;
      spawn.log_path = log;
      spawn.argv = {f.mpirun, "-np", std::to_string(ranks)};
      spawn.argv.insert(spawn.argv.end(), mpirun_args.begin(), mpirun_args.end());
      spawn.argv.insert(spawn.argv.end(),
                        {self, "bench", "run", "--transport", transport, "--scaling", f.scaling, "--tokens", f.tokens,
                         "--total-tokens", f.total_tokens, "--hidden", f.hidden, "--top-k", f.top_k, "--experts",
                         f.experts, "--expert-width", f.expert_width, "--skew", f.skew, "--warmup",
                         std::to_string(f.warmup), "--reps", std::to_string(f.reps), "--seed", std::to_string(f.seed),
                         "--timeout", StrCat(f.timeout), "--out", raw});
      if (f.no_layer) spawn.argv.push_back("--no-layer");
      if (geteuid() == 0) spawn.extra_env = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
      absl::StatusOr<pid_t> pid = SpawnInNewGroup(spawn);
      if (!pid.ok()) {
        std::cerr << "moex bench: error: cannot start " << f.mpirun << ": " << pid.status().message() << "\n";
        return 1;
      }
      const double run_start = elapsed();
      int status = 0;
      int64_t last_done = -1;
      while (true) {
        pid_t got = waitpid(*pid, &status, WNOHANG);
        int64_t done = CountLines(raw);
        if (done != last_done) {
          ProgressBar(done_before + done, *total, elapsed(), StrCat(ranks, " ranks, ", transport));
          last_done = done;
        }
        if (got == *pid) break;
        if (elapsed() - run_start > f.run_timeout) {
          (void)SignalGroup(*pid, SIGKILL);
          waitpid(*pid, &status, 0);
          std::cerr << "\nmoex bench: error: the run at " << ranks << " ranks (" << transport << ") took over "
                    << f.run_timeout << " s and was killed; its log: " << log << LastLines(log, 5) << "\n";
          return 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      (void)SignalGroup(*pid, SIGKILL);  // no rank outlives its mpirun
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::cerr << "\nmoex bench: error: the run at " << ranks << " ranks (" << transport << ") "
                  << DescribeWaitStatus(status) << "; its log: " << log << LastLines(log, 5)
                  << "\n  (points measured so far are in " << dir << "/raw)\n";
        return 1;
      }
      absl::StatusOr<std::vector<bench::BenchResult>> got = bench::ReadResults(raw);
      if (!got.ok()) {
        std::cerr << "\nmoex bench: error: " << got.status().message() << "\n";
        return 1;
      }
      results.insert(results.end(), got->begin(), got->end());
      done_before += static_cast<int64_t>(got->size());
    }
  }
  if (isatty(STDERR_FILENO)) std::cerr << "\n";
  absl::StatusOr<std::vector<std::string>> written = bench::WriteReport(results, dir);
  if (!written.ok()) {
    std::cerr << "moex bench: error: " << written.status().message() << "\n";
    return 1;
  }
  std::vector<double> efficiency = bench::ScalingEfficiency(results);
  // Medians over the repetitions; ratio: of the medians; path: how the
  // rows moved (the transport carries counts and barriers; the baseline is
  // MPI_Alltoallv either way).
  std::cout << absl::StrFormat("%-9s %5s %8s %6s %5s %4s %5s %12s %12s %6s %8s %12s %6s  %s\n", "transport", "ranks",
                               "tok/rank", "hidden", "top-k", "E", "skew", "moex us", "alltoallv us", "ratio", "GB/s",
                               "layer us", "eff", "path");
  for (size_t i = 0; i < results.size(); ++i) {
    const bench::BenchResult& r = results[i];
    std::cout << absl::StrFormat("%-9s %5d %8d %6d %5d %4d %5g %12.0f %12.0f %6s %8.2f %12s %6s  %s\n",
                                 r.point.transport, r.point.ranks, r.point.tokens_per_rank, r.point.hidden,
                                 r.point.top_k, r.point.experts, r.point.skew, r.ours_us.median, r.baseline_us.median,
                                 r.point.ranks > 1 ? absl::StrFormat("%.2f", r.ratio_of_medians) : "-", r.dispatch_gbps,
                                 r.point.layer ? absl::StrFormat("%.0f", r.layer_us.median) : "-",
                                 efficiency[i] > 0 ? absl::StrFormat("%.2f", efficiency[i]) : "-", r.path);
  }
  for (const std::string& path : *written) std::cout << "wrote " << path << "\n";
  return 0;
}

int RunReport(const BenchFlags& f) {
  absl::StatusOr<std::vector<bench::BenchResult>> results = bench::ReadResults(f.results);
  if (!results.ok()) {
    std::cerr << "moex bench: error: " << results.status().message() << "\n";
    return 1;
  }
  absl::StatusOr<std::vector<std::string>> written = bench::WriteReport(*results, f.out.empty() ? "bench-results" : f.out);
  if (!written.ok()) {
    std::cerr << "moex bench: error: " << written.status().message() << "\n";
    return 1;
  }
  for (const std::string& path : *written) std::cout << "wrote " << path << "\n";
  return 0;
}

// Writes a fitted profile where `moex plan --perf --cluster` reads it; false
// (said on stderr) when it cannot.
bool WriteProfile(const std::string& path, const plan::ClusterProfile& profile) {
  std::ofstream out(path, std::ios::trunc);
  nlohmann::json j = bench::ProfileJson(profile);
  j["provenance"] = ProvenanceJson();
  out << j.dump(2) << "\n";
  if (!out) std::cerr << "moex bench: error: cannot write " << path << "\n";
  return static_cast<bool>(out);
}

// `moex bench calibrate --internode`: the network term on points across
// hosts; the rest of the profile is H100's with this machine's copy rate as
// the within-host link.
int RunCalibrateInternode(const std::vector<bench::BenchResult>& results, const bench::CalibrationOptions& o,
                          const BenchFlags& f) {
  absl::StatusOr<plan::ClusterProfile> base = plan::BuiltinProfile("h100");
  if (!base.ok()) {
    std::cerr << "moex bench: error: " << base.status().message() << "\n";
    return 1;
  }
  base->nvlink_gbps = o.copy_gbps > 0 ? o.copy_gbps : base->nvlink_gbps;
  base->source = StrCat("H100's published figures, within a host this machine's copy rate (", base->nvlink_gbps,
                        " GB/s)");
  absl::StatusOr<bench::InternodeCalibration> c = bench::CalibrateInternode(results, o, *base);
  if (!c.ok()) {
    std::cerr << "moex bench: error: " << c.status().message() << "\n";
    return 1;
  }
  if (!f.out.empty() && !WriteProfile(f.out, c->profile)) return 1;
  if (f.json) {
    nlohmann::json j = bench::InternodeCalibrationJson(*c);
    j["provenance"] = ProvenanceJson();
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << absl::StrFormat("calibrated on %d points across hosts (%d ranks a host): network %.3f GB/s + %.0f us "
                               "latency a rank\n",
                               c->fit_points, c->profile.gpus_per_node, c->profile.nic_gbps, c->profile.nic_latency_us);
  std::cout << absl::StrFormat("%5s %5s %8s %6s %5s %24s %28s\n", "ranks", "hosts", "tok/rank", "hidden", "top-k",
                               "hierarchical us (model)", "between hosts MiB (model)");
  for (const bench::InternodeCalibration::Point& p : c->held_out) {
    std::cout << absl::StrFormat("%5d %5d %8d %6d %5d %24s %28s\n", p.point.ranks, p.hosts, p.point.tokens_per_rank,
                                 p.point.hidden, p.point.top_k, absl::StrFormat("%.0f (%.0f)", p.measured_us, p.model_us),
                                 absl::StrFormat("%.2f (%.2f)", p.internode_bytes / (1 << 20),
                                                 p.model_internode_bytes / (1 << 20)));
  }
  std::cout << absl::StrFormat("held-out points: %d; mean absolute error of the hierarchical time: %s\n",
                               c->held_out.size(), c->error < 0 ? "-" : absl::StrFormat("%.1f%%", 100 * c->error));
  if (!f.out.empty()) std::cout << "wrote " << f.out << " (use it: moex plan MODEL --perf --cluster " << f.out << ")\n";
  return 0;
}

int RunCalibrate(const BenchFlags& f) {
  absl::StatusOr<std::vector<bench::BenchResult>> results = bench::ReadResults(f.results);
  bench::CalibrationOptions o;
  absl::StatusOr<std::vector<int64_t>> fit_ranks = ParseList<int64_t>("fit-ranks", f.fit_ranks);
  absl::StatusOr<std::vector<int64_t>> fit_tokens = ParseList<int64_t>("fit-tokens", f.fit_tokens);
  absl::StatusOr<std::vector<int64_t>> only_ranks = ParseList<int64_t>("ranks", f.only_ranks);
  absl::Status status = !results.ok()      ? results.status()
                        : !fit_ranks.ok()  ? fit_ranks.status()
                        : !fit_tokens.ok() ? fit_tokens.status()
                                           : only_ranks.status();
  if (!status.ok()) {
    std::cerr << "moex bench: error: " << status.message() << "\n";
    return 2;
  }
  o.fit_ranks = *fit_ranks;
  o.fit_tokens = *fit_tokens;
  o.only_ranks = *only_ranks;
  o.copy_gbps = bench::MeasureCopyGbps();
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  o.name = StrCat("calibrated-", host);
  if (f.internode) return RunCalibrateInternode(*results, o, f);
  absl::StatusOr<bench::Calibration> c = bench::Calibrate(*results, o);
  if (!c.ok()) {
    std::cerr << "moex bench: error: " << c.status().message() << "\n";
    return 1;
  }
  if (!f.out.empty() && !WriteProfile(f.out, c->profile)) return 1;
  if (f.json) {
    nlohmann::json j = bench::CalibrationJson(*c);
    j["provenance"] = ProvenanceJson();
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  const plan::ClusterProfile& p = c->profile;
  std::cout << absl::StrFormat("calibrated on %d points: link %.2f GB/s + %.1f us latency, experts %.3f TFLOP/s fp32, "
                               "memory copy %.1f GB/s\n",
                               c->fit_points, p.nvlink_gbps, p.nvlink_latency_us, p.fp32_tflops, p.hbm_tbps * 1e3);
  std::cout << absl::StrFormat("%5s %8s %6s %5s %4s %5s %20s %20s %20s %20s\n", "ranks", "tok/rank", "hidden", "top-k",
                               "E", "skew", "dispatch us (model)", "combine us (model)", "experts us (model)",
                               "layer us (model)");
  auto cell = [](double measured, double model) {
    return measured > 0 ? absl::StrFormat("%.0f (%.0f)", measured, model) : std::string("-");
  };
  for (const bench::Prediction& pr : c->held_out) {
    std::cout << absl::StrFormat("%5d %8d %6d %5d %4d %5g %20s %20s %20s %20s\n", pr.point.ranks,
                                 pr.point.tokens_per_rank, pr.point.hidden, pr.point.top_k, pr.point.experts,
                                 pr.point.skew, cell(pr.dispatch_us, pr.dispatch_model_us),
                                 cell(pr.combine_us, pr.combine_model_us), cell(pr.expert_us, pr.expert_model_us),
                                 cell(pr.layer_us, pr.layer_model_us));
  }
  auto pct = [](double e) { return e < 0 ? std::string("-") : absl::StrFormat("%.1f%%", 100 * e); };
  std::cout << absl::StrFormat("held-out points: %d; mean absolute error: dispatch %s, combine %s, experts %s, layer %s\n",
                               c->held_out.size(), pct(c->dispatch_error), pct(c->combine_error), pct(c->expert_error),
                               pct(c->layer_error));
  if (!f.out.empty()) std::cout << "wrote " << f.out << " (use it: moex plan MODEL --perf --cluster " << f.out << ")\n";
  return 0;
}

void AddPointFlags(CLI::App* sub, BenchFlags& f) {
  sub->add_option("--scaling", f.scaling, "weak (tokens per rank fixed), strong (--total-tokens split) or grid")
      ->capture_default_str();
  sub->add_option("--tokens", f.tokens, "Tokens per rank, comma-separated (weak, grid)")->capture_default_str();
  sub->add_option("--total-tokens", f.total_tokens, "Tokens over all ranks (strong)")->capture_default_str();
  sub->add_option("--hidden", f.hidden, "Hidden sizes")->capture_default_str();
  sub->add_option("--top-k", f.top_k, "Experts per token")->capture_default_str();
  sub->add_option("--experts", f.experts, "Routed experts")->capture_default_str();
  sub->add_option("--expert-width", f.expert_width, "Expert intermediate sizes (the layer)")->capture_default_str();
  sub->add_option("--skew", f.skew, "Zipf exponents of expert popularity (0: uniform)")->capture_default_str();
  sub->add_flag("--no-layer", f.no_layer, "Dispatch + combine only, not the whole layer");
  sub->add_option("--warmup", f.warmup, "Repetitions not counted")->capture_default_str();
  sub->add_option("--reps", f.reps, "Repetitions counted")->capture_default_str();
  sub->add_option("--seed", f.seed, "Seed of tokens, routing and weights")->check(Unsigned64())->capture_default_str();
  sub->add_option("--timeout", f.timeout, "Seconds one exchange may wait")->capture_default_str();
}

}  // namespace

CLI::App* AddBenchCommand(CLI::App& app, BenchFlags& f) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmark dispatch, combine and the whole layer against MPI_Alltoallv");
  bench->require_subcommand(1);
  CLI::App* sweep = bench->add_subcommand("sweep", "Sweep ranks and shapes (one mpirun per rank count); JSON, CSV, SVG");
  sweep->add_option("--ranks", f.ranks, "Rank counts, comma-separated")->capture_default_str();
  sweep->add_option("--transports", f.transports, "mpi, ucx or both")->capture_default_str();
  AddPointFlags(sweep, f);
  sweep->add_option("--out", f.out, "Folder for results.json, results.csv and the plots (default: bench-results)");
  sweep->add_option("--run-timeout", f.run_timeout, "Seconds one mpirun may take")->capture_default_str();
  sweep->add_option("--mpirun", f.mpirun, "mpirun to launch with")->capture_default_str();
  sweep->add_option("--mpirun-args", f.mpirun_args, "Its arguments, space-separated")->capture_default_str();
  CLI::App* run = bench->add_subcommand("run", "Run the points on the ranks of this mpirun job (what sweep launches)");
  run->add_option("--transport", f.transport, "mpi or ucx")->capture_default_str();
  AddPointFlags(run, f);
  run->add_option("--out", f.out, "Rank 0 appends a JSON line per point here (default: stdout)");
  CLI::App* report = bench->add_subcommand("report", "Write CSV and plots again from results (or a bench job's status JSON)");
  report->add_option("--results", f.results, "results.json, JSON lines, or `moex job status ID --json` output")->required();
  report->add_option("--out", f.out, "Folder (default: bench-results)");
  CLI::App* calibrate = bench->add_subcommand("calibrate", "Fit the performance model on some points, predict the others");
  calibrate->add_option("--results", f.results, "results.json from a sweep")->required();
  calibrate->add_option("--fit-ranks", f.fit_ranks, "Rank counts to fit on (default: all)");
  calibrate->add_option("--fit-tokens", f.fit_tokens, "Tokens per rank to fit on (default: all)");
  calibrate->add_option("--ranks", f.only_ranks, "Only results at these rank counts (ranks sharing one host's cores: one at a time)");
  calibrate->add_option("--out", f.out, "Write the fitted cluster profile here (for moex plan --perf --cluster)");
  calibrate->add_flag("--json", f.json, "Print JSON");
  calibrate->add_flag("--internode", f.internode,
                      "Fit the network term (NIC GB/s and latency) on points whose ranks spanned hosts "
                      "(bench/cluster_bench.sh), predict the held-out ones with the plan model");
  return bench;
}

int RunBench(CLI::App& bench, const BenchFlags& f, int* argc, char*** argv) {
  if (bench.got_subcommand("run")) return RunRanks(f, argc, argv);
  if (bench.got_subcommand("sweep")) return RunSweep(f);
  if (bench.got_subcommand("report")) return RunReport(f);
  if (bench.got_subcommand("calibrate")) return RunCalibrate(f);
  return 2;
}

}  // namespace moex::cli
