// What the kernel says of memory: the host's MemAvailable and this
// process's figures from /proc/self/status.
#pragma once

#include <cstdint>
#include <string>

namespace moex {

// /proc/meminfo's MemAvailable in bytes, -1 when unknown. The environment
// variable MOEX_MEM_AVAILABLE_BYTES, when set to a number, stands for it
// (tests of what happens on a host short of memory).
int64_t MemAvailableBytes();

// A "Key: N kB" line of /proc/self/status (VmSize, VmHWM, VmRSS...) in
// bytes, -1 when missing.
int64_t ProcessStatusBytes(const std::string& key);

}  // namespace moex
