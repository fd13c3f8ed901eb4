// A standalone driver for the fuzz targets where libFuzzer is not available
// (GCC builds, CI): runs every seed of the corpus, then `--runs` inputs made
// by mutating them (bit flips, byte edits, insertions and deletions,
// splices of two seeds, and tokens that matter to JSON and protobuf text),
// from `--seed`. It is not coverage-guided; with clang, build the targets
// against libFuzzer instead (the `fuzz` preset). A crash, a sanitizer
// report or an uncaught exception ends the process: the test fails, and the
// input is in `fuzz-crash-<target>` in the working directory.
//
//   fuzz_config [--runs N] [--seed S] [--max-len L] CORPUS_DIR_OR_FILE...
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

const char* const kTokens[] = {"{", "}", "[", "]", "\"", ":", ",", "null", "true", "-1", "0", "1e308",
                               "18446744073709551615", "9223372036854775807", "-9223372036854775808",
                               "1099511627776", "\"\\u0000\"", "{}", "[]", "\"layers\"", "\"phy2log\"",
                               "\"data_offsets\"", "\"shape\"", "\"dtype\"", "\"F32\"", "\"BF16\"",
                               "\"num_experts\"", "\"hidden_size\"", "\"model_type\"", "world_size: ",
                               "steps: ", "bench { ", "}", "tokens_per_rank: ", "model: \"tiny\" ", "NaN", "inf"};

std::string Mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng, size_t max_len) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 7) {
      case 0:
        if (!s.empty()) s[at % s.size()] ^= static_cast<char>(1u << (rng() % 8));
        break;
      case 1:
        if (!s.empty()) s[at % s.size()] = static_cast<char>(rng());
        break;
      case 2:
        s.insert(at, 1, static_cast<char>(rng()));
        break;
      case 3:
        if (!s.empty()) s.erase(at % s.size(), 1 + rng() % std::min<size_t>(8, s.size() - at % s.size()));
        break;
      case 4:
        s.insert(at, kTokens[rng() % (sizeof(kTokens) / sizeof(kTokens[0]))]);
        break;
      case 5: {
        const std::string& other = seeds[rng() % seeds.size()];
        if (!other.empty()) {
          const size_t from = rng() % other.size();
          s.insert(at, other.substr(from, 1 + rng() % std::min<size_t>(64, other.size() - from)));
        }
        break;
      }
      default:
        if (!s.empty()) {  // repeat a chunk: deep nesting, long numbers
          const size_t from = at % s.size();
          const std::string chunk = s.substr(from, 1 + rng() % 16);
          for (int r = 0, n = 1 + static_cast<int>(rng() % 8); r < n; ++r) s.insert(from, chunk);
        }
    }
  }
  if (s.size() > max_len) s.resize(max_len);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  long runs = 1000, max_len = 1 << 16;
  unsigned long seed = 1;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--runs" && i + 1 < argc) runs = std::atol(argv[++i]);
    else if (arg == "--seed" && i + 1 < argc) seed = std::strtoul(argv[++i], nullptr, 10);
    else if (arg == "--max-len" && i + 1 < argc) max_len = std::atol(argv[++i]);
    else inputs.push_back(arg);
  }
  std::vector<std::string> seeds;
  for (const std::string& input : inputs) {
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(input)) {
      for (const auto& entry : std::filesystem::directory_iterator(input)) files.push_back(entry.path());
    } else {
      files.push_back(input);
    }
    for (const auto& file : files) {
      std::ifstream in(file, std::ios::binary);
      std::stringstream text;
      text << in.rdbuf();
      seeds.push_back(text.str());
    }
  }
  if (seeds.empty()) seeds.push_back("");
  const std::string name = std::filesystem::path(argv[0]).filename().string();
  auto run = [&](const std::string& input) {
    // Written first, so that a crash leaves the input behind.
    std::ofstream(std::string("fuzz-crash-") + name, std::ios::binary | std::ios::trunc) << input;
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
  };
  for (const std::string& s : seeds) run(s);
  std::mt19937_64 rng(seed);
  for (long r = 0; r < runs; ++r) run(Mutate(seeds[rng() % seeds.size()], seeds, rng, static_cast<size_t>(max_len)));
  std::filesystem::remove(std::string("fuzz-crash-") + name);
  std::printf("%s: %zu seeds and %ld mutated inputs, no crash\n", name.c_str(), seeds.size(), runs);
  return 0;
}
