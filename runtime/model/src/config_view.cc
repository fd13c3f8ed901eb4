#include "moex/model/config_view.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moex/core/str_cat.h"
#include "absl/strings/str_format.h"

namespace moex::model {
namespace {

// A short rendering of a JSON value for error messages.
std::string Show(const nlohmann::json& value) {
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// Line and column (both 1-based) of byte `offset` in `text`.
std::pair<int64_t, int64_t> LineAndColumn(std::string_view text, size_t offset) {
  int64_t line = 1;
  int64_t column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

}  // namespace

// The deepest nesting of arrays and objects in `text` (strings skipped).
int MaxDepth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

absl::StatusOr<nlohmann::json> ParseJsonText(std::string_view text, std::string_view source) {
  // Untrusted text: nesting deep enough to exhaust the stack is refused
  // before parsing; every exception of the parser becomes an error.
  constexpr int kMaxDepth = 256;
  if (const int depth = MaxDepth(text); depth > kMaxDepth) {
    return absl::InvalidArgumentError(StrCat(source, ": JSON nested ", depth, " deep (at most ", kMaxDepth, ")"));
  }
  try {
    nlohmann::json parsed = nlohmann::json::parse(text.begin(), text.end());
    if (!parsed.is_object()) {
      return absl::InvalidArgumentError(
          StrCat(source, ": expected a JSON object at the top level, got ", Show(parsed)));
    }
    return parsed;
  } catch (const nlohmann::json::parse_error& error) {
    // nlohmann reports the byte just past the offending token; point at it.
    size_t offset = error.byte > 0 ? error.byte - 1 : 0;
    auto [line, column] = LineAndColumn(text, offset);
    std::string detail = error.what();
    // Drop nlohmann's "[json.exception.parse_error.101] parse error at ...: " prefix.
    if (size_t colon = detail.find(": "); colon != std::string::npos) {
      detail = detail.substr(colon + 2);
    }
    return absl::InvalidArgumentError(
        absl::StrFormat("%s:%d:%d: malformed JSON: %s", source, line, column, detail));
  } catch (const nlohmann::json::exception& error) {
    // Out of range (a number too large for a double), and the like.
    std::string detail = error.what();
    if (size_t bracket = detail.find("] "); bracket != std::string::npos) detail = detail.substr(bracket + 2);
    return absl::InvalidArgumentError(StrCat(source, ": malformed JSON: ", detail));
  }
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  // Only a regular file of bounded size: a path such as /dev/zero or a FIFO
  // in a hostile job spec must not make the reader wait or fill memory.
  constexpr int64_t kMaxJsonBytes = int64_t{64} << 20;
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (error) return absl::NotFoundError(StrCat("cannot open '", path, "': ", error.message()));
  if (!std::filesystem::is_regular_file(status)) {
    return absl::InvalidArgumentError(StrCat("'", path, "' is not a regular file"));
  }
  const auto size = std::filesystem::file_size(path, error);
  if (error) return absl::NotFoundError(StrCat("cannot open '", path, "': ", error.message()));
  if (static_cast<int64_t>(size) > kMaxJsonBytes) {
    return absl::InvalidArgumentError(StrCat("'", path, "' is ", size, " bytes; a JSON file moex reads is at most ",
                                             kMaxJsonBytes, " bytes"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(StrCat("cannot open '", path, "': ", std::strerror(errno)));
  }
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (in.bad() || in.gcount() != static_cast<std::streamsize>(size)) {
    return absl::DataLossError(StrCat("error while reading '", path, "'"));
  }
  return ParseJsonText(text, path);
}

ConfigView::ConfigView(const nlohmann::json& object, std::string source, std::string prefix)
    : object_(&object), source_(std::move(source)), prefix_(std::move(prefix)) {}

const nlohmann::json* ConfigView::Find(std::string_view key) const {
  if (!object_->is_object()) return nullptr;
  auto it = object_->find(std::string(key));
  if (it == object_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigView::Has(std::string_view key) const { return Find(key) != nullptr; }

bool ConfigView::IsNull(std::string_view key) const {
  if (!object_->is_object()) return false;
  auto it = object_->find(std::string(key));
  return it != object_->end() && it->is_null();
}

std::string ConfigView::Where(std::string_view key) const {
  return StrCat(source_, ": field '", prefix_, prefix_.empty() ? "" : ".", key, "'");
}

absl::Status ConfigView::Invalid(std::string_view key, std::string_view what) const {
  return absl::InvalidArgumentError(StrCat(Where(key), " ", what));
}

absl::StatusOr<std::optional<int64_t>> ConfigView::OptionalInt(std::string_view key, int64_t min,
                                                               int64_t max) const {
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return std::optional<int64_t>();
  std::string range = absl::StrFormat("an integer in [%d, %d]", min, max);
  int64_t number = 0;
  if (value->is_number_integer()) {
    if (value->is_number_unsigned() && value->get<uint64_t>() > static_cast<uint64_t>(max)) {
      return Invalid(key, StrCat("must be ", range, ", got ", Show(*value)));
    }
    number = value->get<int64_t>();
  } else if (value->is_number_float()) {
    double real = value->get<double>();
    if (!std::isfinite(real) || std::floor(real) != real || real < static_cast<double>(min) ||
        real > static_cast<double>(max)) {
      return Invalid(key, StrCat("must be ", range, ", got ", Show(*value)));
    }
    number = static_cast<int64_t>(real);
  } else {
    return Invalid(key, StrCat("must be ", range, ", got ", Show(*value)));
  }
  if (number < min || number > max) {
    return Invalid(key, StrCat("must be ", range, ", got ", Show(*value)));
  }
  return std::optional<int64_t>(number);
}

absl::StatusOr<int64_t> ConfigView::Int(std::string_view key, int64_t min, int64_t max) const {
  absl::StatusOr<std::optional<int64_t>> value = OptionalInt(key, min, max);
  if (!value.ok()) return value.status();
  if (!value->has_value()) {
    return absl::InvalidArgumentError(StrCat(Where(key), " is missing"));
  }
  return **value;
}

absl::StatusOr<int64_t> ConfigView::IntOr(std::string_view key, int64_t min, int64_t max,
                                          int64_t fallback,
                                          std::vector<std::string>* assumed) const {
  absl::StatusOr<std::optional<int64_t>> value = OptionalInt(key, min, max);
  if (!value.ok()) return value.status();
  if (value->has_value()) return **value;
  if (assumed != nullptr) {
    assumed->push_back(StrCat(Where(key), " is absent; assumed ", fallback));
  }
  return fallback;
}

absl::StatusOr<double> ConfigView::DoubleOr(std::string_view key, double fallback) const {
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return fallback;
  if (!value->is_number()) return Invalid(key, StrCat("must be a number, got ", Show(*value)));
  double number = value->get<double>();
  if (!std::isfinite(number)) return Invalid(key, "must be finite");
  return number;
}

absl::StatusOr<bool> ConfigView::BoolOr(std::string_view key, bool fallback) const {
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    return Invalid(key, StrCat("must be true or false, got ", Show(*value)));
  }
  return value->get<bool>();
}

absl::StatusOr<std::string> ConfigView::String(std::string_view key) const {
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return absl::InvalidArgumentError(StrCat(Where(key), " is missing"));
  if (!value->is_string()) {
    return Invalid(key, StrCat("must be a string, got ", Show(*value)));
  }
  return value->get<std::string>();
}

absl::StatusOr<std::string> ConfigView::StringOr(std::string_view key, std::string fallback) const {
  if (!Has(key)) return fallback;
  return String(key);
}

absl::StatusOr<std::vector<int64_t>> ConfigView::IntList(std::string_view key, int64_t min,
                                                         int64_t max) const {
  std::vector<int64_t> result;
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return result;
  if (!value->is_array()) {
    return Invalid(key, StrCat("must be a list of integers, got ", Show(*value)));
  }
  if (value->size() > static_cast<size_t>(FieldLimits::kLayers) * 4) {
    return Invalid(key, StrCat("has ", value->size(), " entries, more than any model has"));
  }
  for (size_t i = 0; i < value->size(); ++i) {
    const nlohmann::json& item = (*value)[i];
    if (!item.is_number_integer() || item.get<int64_t>() < min || item.get<int64_t>() > max) {
      return Invalid(key, absl::StrFormat("entry %d must be an integer in [%d, %d], got %s", i, min,
                                          max, Show(item)));
    }
    result.push_back(item.get<int64_t>());
  }
  return result;
}

absl::StatusOr<std::vector<std::string>> ConfigView::StringList(std::string_view key) const {
  std::vector<std::string> result;
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return result;
  if (!value->is_array() || value->size() > static_cast<size_t>(FieldLimits::kLayers) * 4) {
    return Invalid(key, StrCat("must be a list of strings, got ", Show(*value)));
  }
  for (size_t i = 0; i < value->size(); ++i) {
    if (!(*value)[i].is_string()) {
      return Invalid(key, absl::StrFormat("entry %d must be a string, got %s", i, Show((*value)[i])));
    }
    result.push_back((*value)[i].get<std::string>());
  }
  return result;
}

absl::StatusOr<ConfigView> ConfigView::Object(std::string_view key) const {
  const nlohmann::json* value = Find(key);
  if (value == nullptr) return absl::InvalidArgumentError(StrCat(Where(key), " is missing"));
  if (!value->is_object()) {
    return Invalid(key, StrCat("must be an object, got ", Show(*value)));
  }
  return ConfigView(*value, source_, StrCat(prefix_, prefix_.empty() ? "" : ".", key));
}

}  // namespace moex::model
