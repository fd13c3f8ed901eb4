// A point in time by which a blocking operation must finish. Every blocking
// wait in moex takes one, so nothing waits forever.
#pragma once

#include <chrono>

namespace moex {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline In(Clock::duration timeout) { return Deadline(Clock::now() + timeout); }
  static Deadline InSeconds(double seconds) {
    return In(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
  }
  static Deadline At(Clock::time_point when) { return Deadline(when); }

  bool Expired() const { return Clock::now() >= at_; }
  Clock::time_point at() const { return at_; }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

}  // namespace moex
