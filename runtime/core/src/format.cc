#include "moex/core/format.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace moex {
namespace {

std::string Scaled(double value, double base, const char* const* suffixes, int num_suffixes,
                   const char* separator) {
  int index = 0;
  double magnitude = std::fabs(value);
  while (magnitude >= base && index + 1 < num_suffixes) {
    value /= base;
    magnitude /= base;
    ++index;
  }
  if (index == 0) return absl::StrFormat("%.0f%s%s", value, separator, suffixes[0]);
  return absl::StrFormat("%.2f%s%s", value, separator, suffixes[index]);
}

}  // namespace

std::string FormatCount(double count) {
  static const char* const kSuffixes[] = {"", "K", "M", "B", "T"};
  return Scaled(count, 1000.0, kSuffixes, 5, "");
}

std::string FormatBytes(double bytes) {
  static const char* const kSuffixes[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  return Scaled(bytes, 1024.0, kSuffixes, 6, " ");
}

std::string FormatFlops(double flops) {
  static const char* const kSuffixes[] = {"FLOP", "KFLOP", "MFLOP", "GFLOP", "TFLOP", "PFLOP"};
  return Scaled(flops, 1000.0, kSuffixes, 6, " ");
}

}  // namespace moex
