#include "moex/core/log.h"

#include <memory>
#include <mutex>

#include "spdlog/async.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace moex::log {

namespace {

constexpr const char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%eZ %l %v";
// JSON: the time and level as members, the rest (Render) after them.
constexpr const char kJsonPattern[] = R"({"time":"%Y-%m-%dT%H:%M:%S.%eZ","level":"%l",%v})";

struct State {
  std::mutex mutex;  // guards the logger's replacement (Configure, Shutdown)
  std::shared_ptr<spdlog::logger> logger;
  std::shared_ptr<spdlog::details::thread_pool> pool;  // never_block's writer
  bool json = false;
  std::string component = "moex";
};

State& Global() {
  static State* state = [] {
    auto* s = new State();  // never destroyed: logging works during exit
    s->logger = std::make_shared<spdlog::logger>("moex", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    s->logger->set_pattern(kTextPattern, spdlog::pattern_time_type::utc);
    s->logger->set_level(spdlog::level::debug);
    s->logger->flush_on(spdlog::level::debug);  // a line is out before a crash can lose it
    return s;
  }();
  return *state;
}

// JSON's string escaping (RFC 8259), without the quotes.
void AppendEscaped(std::string& out, std::string_view text) {
  static const char kHex[] = "0123456789abcdef";
  for (unsigned char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += static_cast<char>(c);
        }
    }
  }
}

bool NeedsQuotes(std::string_view value) {
  if (value.empty()) return true;
  for (unsigned char c : value) {
    if (c <= ' ' || c == '"' || c == '\\' || c == '=' || c == 0x7f) return true;
  }
  return false;
}

spdlog::level::level_enum SpdLevel(Level level) {
  switch (level) {
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarn: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

absl::Status Configure(std::string_view format, std::string_view component, bool never_block) {
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError(
        std::string("--log-format '").append(format.substr(0, 32)).append("' is not one of: text, json"));
  }
  State& state = Global();
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  std::shared_ptr<spdlog::details::thread_pool> pool;
  if (never_block) pool = std::make_shared<spdlog::details::thread_pool>(8192, 1);
  std::shared_ptr<spdlog::logger> logger = never_block
      ? std::static_pointer_cast<spdlog::logger>(std::make_shared<spdlog::async_logger>(
            "moex", sink, pool, spdlog::async_overflow_policy::overrun_oldest))
      : std::make_shared<spdlog::logger>("moex", sink);
  if (!never_block) logger->flush_on(spdlog::level::debug);
  logger->set_level(spdlog::level::debug);
  logger->set_pattern(format == "json" ? kJsonPattern : kTextPattern, spdlog::pattern_time_type::utc);
  std::lock_guard<std::mutex> lock(state.mutex);
  state.json = format == "json";
  state.component = std::string(component);
  state.logger = std::move(logger);
  state.pool = std::move(pool);
  return absl::OkStatus();
}

void Shutdown() {
  State& state = Global();
  std::shared_ptr<spdlog::details::thread_pool> pool;
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    if (!state.pool) return;
    auto logger = std::make_shared<spdlog::logger>("moex", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_level(spdlog::level::debug);
    logger->flush_on(spdlog::level::debug);
    logger->set_pattern(state.json ? kJsonPattern : kTextPattern, spdlog::pattern_time_type::utc);
    state.logger = std::move(logger);
    pool = std::move(state.pool);
  }
  // The queue is first in, first out: the pool's end writes every line
  // queued before it, then joins its thread.
  pool.reset();
}

std::string Render(bool json, std::string_view component, std::string_view message,
                   std::initializer_list<Field> fields) {
  std::string out;
  if (json) {
    out += R"("component":")";
    AppendEscaped(out, component);
    out += R"(","msg":")";
    AppendEscaped(out, message);
    out += '"';
    for (const Field& field : fields) {
      out += ",\"";
      AppendEscaped(out, field.key);
      out += "\":\"";
      AppendEscaped(out, field.value);
      out += '"';
    }
    return out;
  }
  out.append(component).append(": ");
  // A message is one line whatever it holds.
  for (char c : message) out += (c == '\n' || c == '\r') ? ' ' : c;
  for (const Field& field : fields) {
    out.append(" ").append(field.key).append("=");
    if (NeedsQuotes(field.value)) {
      out += '"';
      AppendEscaped(out, field.value);
      out += '"';
    } else {
      out += field.value;
    }
  }
  return out;
}

void Write(Level level, std::string_view message, std::initializer_list<Field> fields) {
  State& state = Global();
  std::shared_ptr<spdlog::logger> logger;
  std::string line;
  {
    std::lock_guard<std::mutex> lock(state.mutex);
    logger = state.logger;
    line = Render(state.json, state.component, message, fields);
  }
  logger->log(SpdLevel(level), "{}", line);
}

}  // namespace moex::log
