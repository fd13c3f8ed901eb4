// Human-readable numbers for tables and messages.
#pragma once

#include <cstdint>
#include <string>

namespace moex {

// 671026419200 -> "671.03B"; 1.6e12 -> "1.60T"; 7168 -> "7.17K".
std::string FormatCount(double count);

// Bytes in binary units: 1342177280 -> "1.25 GiB".
std::string FormatBytes(double bytes);

// FLOPs in decimal units: 7.4e10 -> "74.00 GFLOP".
std::string FormatFlops(double flops);

inline constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace moex
