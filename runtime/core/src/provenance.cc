#include "moex/core/provenance.h"

#include <unistd.h>

#include <ctime>
#include <fstream>
#include <mutex>
#include <vector>

#include "moex/core/build_info.h"

namespace moex {

namespace {

std::mutex& CommandLineMutex() {
  static std::mutex mutex;
  return mutex;
}

std::vector<std::string>& CommandLine() {
  static std::vector<std::string> words;
  return words;
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    size_t start = line.find_first_not_of(' ', colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

}  // namespace

void RecordCommandLine(int argc, const char* const* argv) {
  std::lock_guard<std::mutex> lock(CommandLineMutex());
  CommandLine().assign(argv, argv + argc);
}

nlohmann::json ProvenanceJson(const RunFacts& facts) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  char date[32] = {};
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &utc);
  nlohmann::json command = nlohmann::json::array();
  {
    std::lock_guard<std::mutex> lock(CommandLineMutex());
    for (const std::string& word : CommandLine()) command.push_back(word);
  }
  return {{"moex_version", build::kVersion},
          {"commit", build::kGitRevision},
          {"host", host},
          {"cpu", CpuModel()},
          {"cpus_online", sysconf(_SC_NPROCESSORS_ONLN)},
          {"gpu", facts.gpu.empty() ? "none" : facts.gpu},
          {"world_size", facts.world_size},
          {"transport", facts.transport.empty() ? "none" : facts.transport},
          {"command_line", std::move(command)},
          {"date", date}};
}

}  // namespace moex
