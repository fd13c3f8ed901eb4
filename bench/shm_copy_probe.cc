// A plain two-process shared-memory copy, with nothing of moex in it: is a
// slow copy into a peer's /dev/shm segment moex's, or the machine's?
//
// The parent makes a segment in /dev/shm (posix_fallocate, as moex's
// shared segments do) and maps it; the child maps it too and, once per
// repetition, copies `bytes` from its own buffer into it (what a rank's
// dispatch does into a peer's receive area); the parent then reads it (what
// the peer's experts do). Each repetition is timed in the child, between two
// handshakes through the segment's first cache line. Printed: the first
// repetition (it faults the pages in) and the median, p10, p90 and max of
// the others, with GB/s on the bytes copied (each byte read once from the
// child's buffer and written once into the segment), and beside them a
// memcpy of the same bytes into a private buffer of the child, timed alike.
//
//   moex_shm_copy_probe [--bytes 1048576] [--reps 200] [--rounds 5] [--populate] [--fresh]
//       [--cpus A,B]
//
// --populate maps the segment with MAP_POPULATE (faulted in at map time);
// --fresh makes a new segment every round (as a new moex job does); rounds
// are separated by 200 ms; --cpus pins the reader to CPU A and the copier
// to CPU B (as mpirun binds two ranks to cores 0 and 1).
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  size_t bytes = 1 << 20;
  int reps = 200;
  int rounds = 5;
  bool populate = false;
  bool fresh = false;
  int reader_cpu = -1, copier_cpu = -1;  // -1: not pinned
};

void Pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) std::perror("sched_setaffinity");
}

// The handshake word: the child sets it to 2 r + 1 when repetition r's copy
// is done, the parent to 2 r + 2 once it has read the rows.
std::atomic<int64_t>* Turn(void* segment) { return static_cast<std::atomic<int64_t>*>(segment); }

void WaitFor(std::atomic<int64_t>* turn, int64_t value) {
  while (turn->load(std::memory_order_acquire) < value) {
  }
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

void* MapSegment(const std::string& path, size_t bytes, bool create, bool populate) {
  int fd = open(path.c_str(), create ? (O_CREAT | O_EXCL | O_RDWR) : O_RDWR, 0600);
  if (fd < 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  if (create && posix_fallocate(fd, 0, static_cast<off_t>(bytes)) != 0) {
    std::fprintf(stderr, "posix_fallocate %s failed\n", path.c_str());
    std::exit(1);
  }
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  return p;
}

// One round: a segment (made or reused), `reps` copies into it from a
// second process. Returns the child's times in microseconds, first first.
std::vector<double> Round(const Options& o, const std::string& path, void** segment) {
  const size_t line = 64, total = line + o.bytes;
  if (*segment == nullptr) *segment = MapSegment(path, total, /*create=*/true, o.populate);
  auto* turn = Turn(*segment);
  turn->store(0);
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) std::exit(1);
  pid_t child = fork();
  if (child == 0) {
    Pin(o.copier_cpu);
    close(pipe_fds[0]);
    void* seg = MapSegment(path, total, /*create=*/false, o.populate);
    auto* t = Turn(seg);
    std::vector<char> src(o.bytes, 1);
    std::vector<double> us;
    for (int r = 0; r < o.reps; ++r) {
      WaitFor(t, 2 * r);
      auto start = Clock::now();
      std::memcpy(static_cast<char*>(seg) + line, src.data(), o.bytes);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      t->store(2 * r + 1, std::memory_order_release);
    }
    if (write(pipe_fds[1], us.data(), us.size() * sizeof(double)) < 0) std::_Exit(1);
    std::_Exit(0);
  }
  close(pipe_fds[1]);
  volatile int64_t sink = 0;
  for (int r = 0; r < o.reps; ++r) {
    WaitFor(turn, 2 * r + 1);
    const auto* rows = reinterpret_cast<const int64_t*>(static_cast<char*>(*segment) + line);
    int64_t sum = 0;
    for (size_t i = 0; i < o.bytes / 8; i += 8) sum += rows[i];  // one word per cache line
    sink = sink + sum;
    turn->store(2 * r + 2, std::memory_order_release);
  }
  std::vector<double> us(static_cast<size_t>(o.reps));
  size_t got = 0;
  while (got < us.size() * sizeof(double)) {
    ssize_t n = read(pipe_fds[0], reinterpret_cast<char*>(us.data()) + got, us.size() * sizeof(double) - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  close(pipe_fds[0]);
  waitpid(child, nullptr, 0);
  return us;
}

// The same copies into a private buffer of one process, for scale.
std::vector<double> PrivateCopies(const Options& o) {
  std::vector<char> src(o.bytes, 1), dst(o.bytes, 0);
  std::vector<double> us;
  for (int r = 0; r < o.reps; ++r) {
    auto start = Clock::now();
    std::memcpy(dst.data(), src.data(), o.bytes);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    asm volatile("" : : "r"(dst.data()) : "memory");
  }
  return us;
}

void Print(const char* what, const std::vector<double>& us, size_t bytes) {
  std::vector<double> rest(us.begin() + 1, us.end());
  const double median = Percentile(rest, 0.5);
  std::printf("%-28s first %8.1f us; then median %7.1f us (p10 %7.1f, p90 %7.1f, max %8.1f) = %6.2f GB/s\n", what,
              us[0], median, Percentile(rest, 0.1), Percentile(rest, 0.9), Percentile(rest, 1.0),
              static_cast<double>(bytes) / (median * 1e3));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&] { return i + 1 < argc ? std::atol(argv[++i]) : 0L; };
    if (flag == "--bytes") o.bytes = static_cast<size_t>(value());
    else if (flag == "--reps") o.reps = static_cast<int>(value());
    else if (flag == "--rounds") o.rounds = static_cast<int>(value());
    else if (flag == "--populate") o.populate = true;
    else if (flag == "--fresh") o.fresh = true;
    else if (flag == "--cpus" && i + 1 < argc && std::sscanf(argv[++i], "%d,%d", &o.reader_cpu, &o.copier_cpu) == 2) {
    }
    else {
      std::fprintf(stderr, "moex_shm_copy_probe: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (o.bytes < 64 || o.reps < 2 || o.rounds < 1) {
    std::fprintf(stderr, "moex_shm_copy_probe: --bytes >= 64, --reps >= 2, --rounds >= 1\n");
    return 2;
  }
  std::printf("%zu bytes a copy, %d copies a round, %d rounds, %s segment%s%s\n", o.bytes, o.reps, o.rounds,
              o.fresh ? "a fresh" : "one reused", o.populate ? ", MAP_POPULATE" : "",
              o.reader_cpu >= 0 ? (", reader on CPU " + std::to_string(o.reader_cpu) + ", copier on CPU " +
                                   std::to_string(o.copier_cpu)).c_str()
                                : "");
  Pin(o.reader_cpu);
  void* segment = nullptr;
  const size_t total = 64 + o.bytes;
  for (int round = 0; round < o.rounds; ++round) {
    const std::string path = "/dev/shm/moex-probe-" + std::to_string(getpid()) + "-" +
                             std::to_string(o.fresh ? round : 0);
    std::vector<double> us = Round(o, path, &segment);
    char what[64];
    std::snprintf(what, sizeof(what), "round %d, into the segment:", round + 1);
    Print(what, us, o.bytes);
    if (o.fresh || round + 1 == o.rounds) {
      munmap(segment, total);
      segment = nullptr;
      unlink(path.c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  Print("private memcpy, one process:", PrivateCopies(o), o.bytes);
  return 0;
}
