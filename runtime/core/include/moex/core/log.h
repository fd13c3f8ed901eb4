// Logs: one line an event, with a UTC timestamp and a level, on stderr, as
// text for people or as JSON for collectors (`--log-format text|json` on
// `moex serve` and `moex run`). Written through spdlog (Debian's
// libspdlog-dev); this file only fixes moex's format and its fields.
//
//   text: 2026-12-02T12:45:14.123Z info serve: job submitted job_id=j-3f… world_size=4
//   json: {"time":"2026-12-02T12:45:14.123Z","level":"info","component":"serve",
//          "msg":"job submitted","job_id":"j-3f…","world_size":"4"}
//
// Field values are user text at times (a job's name): JSON escapes them;
// text quotes a value with spaces, quotes or control characters (as JSON
// would), so that one event stays one line.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace moex::log {

enum class Level { kDebug, kInfo, kWarn, kError };

struct Field {
  std::string_view key;
  std::string value;
};

// "text" or "json" (INVALID_ARGUMENT naming --log-format otherwise), and
// the component every line names ("serve", "run"). Before it is called,
// lines are text with component "moex", written at once. `never_block`
// (the controller, which logs under its lock): lines go through a queue of
// 8192 to a writer thread, so that a stderr nobody reads (a full pipe)
// cannot stall it; when the queue is full the oldest lines are dropped.
// Not thread-safe against logging: call once at start, Shutdown at the end.
absl::Status Configure(std::string_view format, std::string_view component, bool never_block = false);
// Writes what is queued and stops the writer thread (never_block); later
// lines are written at once.
void Shutdown();

void Write(Level level, std::string_view message, std::initializer_list<Field> fields = {});
inline void Info(std::string_view message, std::initializer_list<Field> fields = {}) {
  Write(Level::kInfo, message, fields);
}
inline void Warn(std::string_view message, std::initializer_list<Field> fields = {}) {
  Write(Level::kWarn, message, fields);
}
inline void Error(std::string_view message, std::initializer_list<Field> fields = {}) {
  Write(Level::kError, message, fields);
}

// The line Write would print (without the timestamp and level in text;
// the JSON object's members after them in JSON): for tests.
std::string Render(bool json, std::string_view component, std::string_view message,
                   std::initializer_list<Field> fields);

}  // namespace moex::log
