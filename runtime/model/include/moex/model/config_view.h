// Typed, bounded access to a Hugging Face config.json.
//
// Every error names the source and the full field path, e.g.
//   "deepseek_v3.json: field 'text_config.hidden_size' must be an integer in
//    [1, 131072], got \"7k\"".
// Bounds are part of the contract: they keep every parameter count that the
// families compute inside int64 (see limits below), so a hostile config gets
// an error instead of an overflowed number.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moex::model {

// Upper bounds for config fields. With these, the largest product a family
// forms (layers x experts x 3 x hidden x expert width) stays below 2^62.
struct FieldLimits {
  static constexpr int64_t kLayers = 2048;
  static constexpr int64_t kExperts = 8192;
  static constexpr int64_t kHidden = 131072;
  static constexpr int64_t kWidth = 524288;  // MLP and expert widths, LoRA ranks
  static constexpr int64_t kVocab = 16777216;
  static constexpr int64_t kHeads = 4096;
  static constexpr int64_t kHeadDim = 16384;
  static constexpr int64_t kSmall = 65536;  // states, kernels, groups, ratios
};

// Parses JSON text; a syntax error names `source`, the line and the column.
absl::StatusOr<nlohmann::json> ParseJsonText(std::string_view text, std::string_view source);

// Reads and parses a file; names the path on every error.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

class ConfigView {
 public:
  // `object` must outlive the view. `source` names the file in messages;
  // `prefix` is the path of `object` inside it ("" for the top level).
  ConfigView(const nlohmann::json& object, std::string source, std::string prefix = "");

  const std::string& source() const { return source_; }

  // True when the field is present and not null.
  bool Has(std::string_view key) const;
  // True when the field is present and null (some fields mean "off" so).
  bool IsNull(std::string_view key) const;

  // A required integer in [min, max].
  absl::StatusOr<int64_t> Int(std::string_view key, int64_t min, int64_t max) const;
  // An integer in [min, max], or `fallback` when absent or null. When the
  // fallback is used and `assumed` is set, a line saying so is appended.
  absl::StatusOr<int64_t> IntOr(std::string_view key, int64_t min, int64_t max, int64_t fallback,
                                std::vector<std::string>* assumed = nullptr) const;
  // An integer in [min, max], or nullopt when absent or null.
  absl::StatusOr<std::optional<int64_t>> OptionalInt(std::string_view key, int64_t min,
                                                     int64_t max) const;
  absl::StatusOr<double> DoubleOr(std::string_view key, double fallback) const;
  absl::StatusOr<bool> BoolOr(std::string_view key, bool fallback) const;
  absl::StatusOr<std::string> String(std::string_view key) const;
  absl::StatusOr<std::string> StringOr(std::string_view key, std::string fallback) const;
  // A list of integers in [min, max] (absent or null: empty).
  absl::StatusOr<std::vector<int64_t>> IntList(std::string_view key, int64_t min,
                                               int64_t max) const;
  // A list of strings (absent or null: empty).
  absl::StatusOr<std::vector<std::string>> StringList(std::string_view key) const;
  // A nested object, e.g. Llama 4's "text_config".
  absl::StatusOr<ConfigView> Object(std::string_view key) const;

  // "source: field 'prefix.key'", the head of every message about a field.
  std::string Where(std::string_view key) const;

  // An error about `key` whose text ends with `what`.
  absl::Status Invalid(std::string_view key, std::string_view what) const;

 private:
  const nlohmann::json* Find(std::string_view key) const;

  const nlohmann::json* object_;
  std::string source_;
  std::string prefix_;
};

}  // namespace moex::model
