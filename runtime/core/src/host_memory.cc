#include "moex/core/host_memory.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace moex {
namespace {

int64_t Kilobytes(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kb = -1;
    fields >> kb;
    return kb < 0 ? -1 : kb * 1024;
  }
  return -1;
}

}  // namespace

int64_t MemAvailableBytes() {
  if (const char* forced = std::getenv("MOEX_MEM_AVAILABLE_BYTES")) {
    char* end = nullptr;
    const long long value = std::strtoll(forced, &end, 10);
    if (end != forced && *end == '\0' && value >= 0) return value;
  }
  return Kilobytes("/proc/meminfo", "MemAvailable");
}

int64_t ProcessStatusBytes(const std::string& key) { return Kilobytes("/proc/self/status", key); }

}  // namespace moex
