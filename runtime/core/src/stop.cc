#include "moex/core/stop.h"

#include <signal.h>

#include <atomic>

namespace moex {
namespace {

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
              "the signal handler touches only lock-free atomics");
std::atomic<int> g_waits{0};
std::atomic<bool> g_acknowledged{false};

// Async-signal-safe: atomics, signal() and raise() only.
void OnStop(int signal_number) {
  g_stop_signal.store(signal_number);
  if (g_waits.load() > 0) return;  // the wait sees the flag and says why
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number);
}

}  // namespace

void InstallStopHandler() {
  struct sigaction action = {};
  action.sa_handler = OnStop;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
}

int StopSignal() { return g_stop_signal.load(); }

void AcknowledgeStop() { g_acknowledged.store(true); }

WaitInProgress::WaitInProgress() { g_waits.fetch_add(1); }
WaitInProgress::~WaitInProgress() {
  // A stop that came during the wait and was not acted on (the wait
  // finished first) ends the process now, as it would have.
  if (g_waits.fetch_sub(1) == 1 && g_stop_signal.load() != 0 && !g_acknowledged.load()) {
    ::signal(g_stop_signal.load(), SIG_DFL);
    ::raise(g_stop_signal.load());
  }
}

}  // namespace moex
