// Dispatch + combine against a plain MPI_Alltoallv moving the same bytes,
// timed in the same run, interleaved repetition by repetition.
//
//   mpirun -np 4 moex_bench_dispatch [--tokens 4096] [--hidden 2048]
//       [--top-k 8] [--experts 64] [--reps 10] [--warmup 2]
//       [--transport mpi|ucx] [--json FILE]
//
// "ours" is the whole of Dispatch (counts exchange, packing, the transfer,
// unpacking) plus Combine (the transfer and the per-token sum), with a copy
// of the received rows standing in for the experts (not timed). The
// baseline is two MPI_Alltoallv calls with exactly the byte counts ours sent:
// the floor of a two-phase exchange whose data is already laid out.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "moex/core/provenance.h"
#include "moex/ep/dispatch.h"
#include "moex/transport/mpi_transport.h"
#include "moex/transport/transport_registry.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int64_t tokens = 4096, hidden = 2048, top_k = 8, experts = 64;
  int reps = 10, warmup = 2;
  std::string transport = "mpi", json;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--tokens") o.tokens = std::atoll(value.c_str());
    else if (flag == "--hidden") o.hidden = std::atoll(value.c_str());
    else if (flag == "--top-k") o.top_k = std::atoll(value.c_str());
    else if (flag == "--experts") o.experts = std::atoll(value.c_str());
    else if (flag == "--reps") o.reps = std::atoi(value.c_str());
    else if (flag == "--warmup") o.warmup = std::atoi(value.c_str());
    else if (flag == "--transport") o.transport = value;
    else if (flag == "--json") o.json = value;
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); std::exit(2); }
  }
  return o;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : (v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]));
}

// The slowest rank's time for `seconds` measured on each.
double Slowest(double seconds) {
  double max = 0;
  MPI_Allreduce(&seconds, &max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return max;
}

void Die(const absl::Status& status) {
  std::fprintf(stderr, "moex_bench_dispatch: %s\n", std::string(status.message()).c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

}  // namespace

int main(int argc, char** argv) {
  moex::RecordCommandLine(argc, argv);
  using namespace moex;
  auto session = transport::MpiSession::Start(&argc, &argv);
  if (!session.ok()) return 1;
  Options o = Parse(argc, argv);
  auto made = transport::CreateTransport(o.transport);
  if (!made.ok()) Die(made.status());
  transport::Transport& t = **made;
  const int rank = t.rank(), world = t.world_size();

  absl::StatusOr<ep::Placement> placement = ep::Placement::Contiguous(o.experts, world);
  if (!placement.ok()) Die(placement.status());
  // Uniform routing: k distinct experts per token; tokens of random values.
  std::mt19937_64 rng(1234 + rank);
  Tensor x({o.tokens, o.hidden});
  std::uniform_real_distribution<float> value(-1, 1);
  for (float& v : x.values) v = value(rng);
  std::vector<int32_t> topk(o.tokens * o.top_k);
  std::vector<float> weights(o.tokens * o.top_k, 1.0f / static_cast<float>(o.top_k));
  for (int64_t tok = 0; tok < o.tokens; ++tok) {
    std::vector<int32_t> all(o.experts);
    for (int32_t e = 0; e < o.experts; ++e) all[e] = e;
    std::shuffle(all.begin(), all.end(), rng);
    std::copy(all.begin(), all.begin() + o.top_k, topk.begin() + tok * o.top_k);
  }
  ep::DispatchLayout layout = ep::GetDispatchLayout(*placement, topk.data(), o.tokens, o.top_k,
                                                    rank * o.tokens);
  std::vector<double> ours, base, dispatch_only, combine_only;
  int64_t dispatch_bytes = 0, combine_bytes = 0, remote_copies = 0;
  for (int r = 0; r < world; ++r) remote_copies += r == rank ? 0 : layout.num_tokens_per_rank[r];
  std::vector<int> send_a, recv_a, send_b, recv_b, sdispl_a, rdispl_a, sdispl_b, rdispl_b;
  std::vector<char> sbuf, rbuf;
  // The path as `moex run` picks it (MOEX_INTRANODE=0 forces all-to-all-v).
  absl::StatusOr<ep::DispatchOptions> dispatch_options = ep::DispatchOptions::FromEnvironment();
  if (!dispatch_options.ok()) Die(dispatch_options.status());
  absl::StatusOr<ep::Dispatcher> created = ep::Dispatcher::Create(t, *dispatch_options, Deadline::InSeconds(120));
  if (!created.ok()) Die(created.status());
  ep::Dispatcher& dispatcher = *created;
  if (rank == 0) std::fprintf(stderr, "dispatch path: %s\n", dispatcher.path_reason().c_str());
  ep::DispatchResult received;
  Tensor y({o.tokens, o.hidden});

  for (int rep = 0; rep < o.warmup + o.reps; ++rep) {
    // ours
    MPI_Barrier(MPI_COMM_WORLD);
    auto start = Clock::now();
    absl::Status dispatched = dispatcher.Dispatch(t, *placement, x, layout, weights.data(),
                                                  Deadline::InSeconds(120), &received);
    if (!dispatched.ok()) Die(dispatched);
    double dispatch_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    // The received rows stand in for the experts' output, written where
    // the MoE layer's experts write theirs: not timed.
    float* partial = dispatcher.PartialBuffer(received);
    for (int64_t i = 0; i < received.num_recv(); ++i) {
      std::memcpy(partial + i * o.hidden, received.recv_rows[i], o.hidden * sizeof(float));
    }
    std::fill(y.values.begin(), y.values.end(), 0.0f);
    // The experts of every rank are done before combine starts, as after
    // a real expert phase: combine is timed on its own.
    MPI_Barrier(MPI_COMM_WORLD);
    auto combine_start = Clock::now();
    int64_t sent = 0;
    absl::Status combined = dispatcher.Combine(t, received, partial, &y, &sent, Deadline::InSeconds(120));
    if (!combined.ok()) Die(combined);
    double combine_seconds = std::chrono::duration<double>(Clock::now() - combine_start).count();
    double ours_seconds = dispatch_seconds + combine_seconds;

    // The same byte counts, as two plain MPI_Alltoallv calls.
    if (rep == 0) {
      const int64_t record = (o.hidden + 2 * o.top_k) * 4;
      send_a.resize(world); recv_a.resize(world); send_b.resize(world); recv_b.resize(world);
      sdispl_a.assign(world, 0); rdispl_a.assign(world, 0); sdispl_b.assign(world, 0); rdispl_b.assign(world, 0);
      int64_t sa = 0, ra = 0, sb = 0, rb = 0;
      for (int r = 0; r < world; ++r) {
        // Ours never copies a token's visit to its own rank; neither does
        // the baseline.
        const int64_t remote = r == rank ? 0 : 1;
        send_a[r] = static_cast<int>(remote * received.send_tokens[r] * record);
        recv_a[r] = static_cast<int>(remote * received.recv_tokens[r] * record);
        send_b[r] = static_cast<int>(remote * received.recv_tokens[r] * o.hidden * 4);
        recv_b[r] = static_cast<int>(remote * received.send_tokens[r] * o.hidden * 4);
        sdispl_a[r] = static_cast<int>(sa); rdispl_a[r] = static_cast<int>(ra);
        sdispl_b[r] = static_cast<int>(sb); rdispl_b[r] = static_cast<int>(rb);
        sa += send_a[r]; ra += recv_a[r]; sb += send_b[r]; rb += recv_b[r];
      }
      sbuf.assign(std::max(sa, sb), 1);
      rbuf.assign(std::max(ra, rb), 0);
      dispatch_bytes = received.bytes_sent;
      combine_bytes = sent;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    start = Clock::now();
    MPI_Alltoallv(sbuf.data(), send_a.data(), sdispl_a.data(), MPI_BYTE, rbuf.data(), recv_a.data(),
                  rdispl_a.data(), MPI_BYTE, MPI_COMM_WORLD);
    MPI_Alltoallv(sbuf.data(), send_b.data(), sdispl_b.data(), MPI_BYTE, rbuf.data(), recv_b.data(),
                  rdispl_b.data(), MPI_BYTE, MPI_COMM_WORLD);
    double base_seconds = std::chrono::duration<double>(Clock::now() - start).count();

    double slow_ours = Slowest(ours_seconds), slow_base = Slowest(base_seconds);
    double slow_dispatch = Slowest(dispatch_seconds), slow_combine = Slowest(combine_seconds);
    if (rep >= o.warmup) {
      ours.push_back(slow_ours);
      base.push_back(slow_base);
      dispatch_only.push_back(slow_dispatch);
      combine_only.push_back(slow_combine);
    }
    if (rank == 0) {
      std::fprintf(stderr, "\r%s %d/%d", rep < o.warmup ? "warm-up" : "rep", rep < o.warmup ? rep + 1 : rep - o.warmup + 1,
                   rep < o.warmup ? o.warmup : o.reps);
    }
  }
  // Bytes per token that crossed between ranks, against the floor: each
  // token's distinct remote destination ranks x hidden x 4 bytes.
  int64_t totals[3] = {dispatch_bytes, combine_bytes, remote_copies}, sums[3];
  MPI_Allreduce(totals, sums, 3, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) {
    double all_tokens = static_cast<double>(o.tokens) * world;
    double ratio = Median(ours) / Median(base);
    double floor_bytes = static_cast<double>(sums[2]) * o.hidden * 4;
    std::vector<double> ratios;
    for (size_t i = 0; i < ours.size(); ++i) ratios.push_back(ours[i] / base[i]);
    std::sort(ratios.begin(), ratios.end());
    std::printf("\nranks %d, tokens/rank %ld, hidden %ld, top-%ld, %ld experts, transport %s (%s path), %d reps\n",
                world, static_cast<long>(o.tokens), static_cast<long>(o.hidden), static_cast<long>(o.top_k),
                static_cast<long>(o.experts), std::string(t.name()).c_str(), std::string(dispatcher.path()).c_str(),
                o.reps);
    std::printf("dispatch %.2f ms + combine %.2f ms = %.2f ms; MPI_Alltoallv of the same bytes %.2f ms\n",
                1e3 * Median(dispatch_only), 1e3 * Median(combine_only), 1e3 * Median(ours), 1e3 * Median(base));
    std::printf("ratio ours/alltoallv: median %.3f (min %.3f, max %.3f); target <= 1.15\n", ratio,
                ratios.front(), ratios.back());
    std::printf("dispatch bytes per token crossed: %.0f; floor (distinct remote ranks x hidden x 4): %.0f (%.3fx)\n",
                sums[0] / all_tokens, floor_bytes / all_tokens, floor_bytes > 0 ? sums[0] / floor_bytes : 1.0);
    if (!o.json.empty()) {
      nlohmann::json j = {{"ranks", world}, {"tokens_per_rank", o.tokens}, {"hidden", o.hidden},
                          {"top_k", o.top_k}, {"experts", o.experts}, {"transport", std::string(t.name())}, {"path", std::string(dispatcher.path())},
                          {"reps", o.reps}, {"dispatch_ms", 1e3 * Median(dispatch_only)},
                          {"combine_ms", 1e3 * Median(combine_only)}, {"ours_ms", 1e3 * Median(ours)},
                          {"alltoallv_ms", 1e3 * Median(base)}, {"ratio", ratio},
                          {"ratio_min", ratios.front()}, {"ratio_max", ratios.back()},
                          {"dispatch_bytes_per_token", sums[0] / all_tokens},
                          {"floor_bytes_per_token", floor_bytes / all_tokens}};
      j["provenance"] = moex::ProvenanceJson();
      std::ofstream(o.json) << j.dump(2) << "\n";
    }
  }
  made->reset();
  return 0;
}
