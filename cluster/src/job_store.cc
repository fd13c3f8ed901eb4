#include "moex/cluster/job_store.h"

#include <limits>

#include <sqlite3.h>

#include <filesystem>
#include <tuple>

#include "moex/core/status_macros.h"

#include "moex/core/str_cat.h"

namespace moex::cluster {
namespace {

// SQLite result codes become Status here and nowhere else.
absl::Status SqliteStatus(sqlite3* db, int code, std::string_view what, const std::string& path) {
  if (code == SQLITE_OK || code == SQLITE_DONE || code == SQLITE_ROW) return absl::OkStatus();
  std::string detail = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(code);
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(StrCat(path, ": ", what, ": disk full (", detail, ")"));
  if (code == SQLITE_READONLY || code == SQLITE_CANTOPEN || code == SQLITE_PERM) {
    return absl::PermissionDeniedError(StrCat(path, ": ", what, ": ", detail));
  }
  return absl::InternalError(StrCat(path, ": ", what, ": ", detail));
}

bool Ended(const moex::v1::Job& job) {
  return job.state() == moex::v1::JOB_STATE_SUCCEEDED || job.state() == moex::v1::JOB_STATE_FAILED ||
         job.state() == moex::v1::JOB_STATE_CANCELLED;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& state_dir) {
  std::error_code error;
  std::filesystem::create_directories(state_dir, error);
  if (error) {
    return absl::PermissionDeniedError(StrCat("cannot create state dir '", state_dir, "': ", error.message()));
  }
  std::string path = (std::filesystem::path(state_dir) / "jobs.db").string();
  sqlite3* db = nullptr;
  int code = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (code != SQLITE_OK) {
    absl::Status status = SqliteStatus(db, code, "open", path);
    sqlite3_close(db);
    return status;
  }
  auto store = std::unique_ptr<JobStore>(new JobStore(db, path));
  const char* setup =
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=FULL;"
      "PRAGMA busy_timeout=5000;"
      "CREATE TABLE IF NOT EXISTS jobs ("
      "  id TEXT PRIMARY KEY,"
      "  submit_ms INTEGER NOT NULL,"
      "  process_group INTEGER NOT NULL DEFAULT 0,"
      "  record BLOB NOT NULL);"
      "CREATE INDEX IF NOT EXISTS jobs_by_submit ON jobs (submit_ms, id);";
  code = sqlite3_exec(db, setup, nullptr, nullptr, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db, code, "initialise", path);
  MOEX_RETURN_IF_ERROR(store->AddEndColumns());
  MOEX_RETURN_IF_ERROR(store->QuarantineCorruptRows());
  return store;
}

absl::Status JobStore::QuarantineCorruptRows() {
  int code = sqlite3_exec(db_,
                          "CREATE TABLE IF NOT EXISTS quarantine ("
                          "  id TEXT, submit_ms INTEGER, process_group INTEGER, record BLOB,"
                          "  reason TEXT NOT NULL, quarantined_ms INTEGER NOT NULL);",
                          nullptr, nullptr, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, "create the quarantine table", path_);
  // Found first (a read), then moved (a write), so that reading never
  // races the moves.
  std::vector<std::pair<int64_t, std::string>> bad;  // rowid, why
  sqlite3_stmt* statement = nullptr;
  code = sqlite3_prepare_v2(db_, "SELECT rowid, id, record FROM jobs", -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, "check the job records", path_);
  while ((code = sqlite3_step(statement)) == SQLITE_ROW) {
    const int64_t rowid = sqlite3_column_int64(statement, 0);
    const unsigned char* text = sqlite3_column_text(statement, 1);
    const std::string id = text != nullptr ? reinterpret_cast<const char*>(text) : "";
    const int bytes = sqlite3_column_bytes(statement, 2);
    moex::v1::Job job;
    std::string why;
    if (!job.ParseFromArray(sqlite3_column_blob(statement, 2), bytes)) {
      why = "does not parse as a moex.v1.Job";
    } else if (job.id() != id) {
      why = "holds another job's id";
    }
    if (!why.empty()) {
      bad.emplace_back(rowid, why);
      quarantined_.push_back(StrCat("job ", id.substr(0, 64), " (", bytes, " bytes): the record ", why));
    }
  }
  sqlite3_finalize(statement);
  if (code != SQLITE_DONE) return SqliteStatus(db_, code, "check the job records", path_);
  if (bad.empty()) return absl::OkStatus();
  code = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  for (const auto& [rowid, why] : bad) {
    if (code != SQLITE_OK && code != SQLITE_DONE) break;
    code = sqlite3_prepare_v2(db_,
                              "INSERT INTO quarantine (id, submit_ms, process_group, record, reason, quarantined_ms) "
                              "SELECT id, submit_ms, process_group, record, ?1, CAST(strftime('%s','now') AS INTEGER) "
                              "* 1000 FROM jobs WHERE rowid = ?2",
                              -1, &statement, nullptr);
    if (code != SQLITE_OK) break;
    sqlite3_bind_text(statement, 1, why.c_str(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(statement, 2, rowid);
    code = sqlite3_step(statement);
    sqlite3_finalize(statement);
    if (code != SQLITE_DONE) break;
    code = sqlite3_prepare_v2(db_, "DELETE FROM jobs WHERE rowid = ?1", -1, &statement, nullptr);
    if (code != SQLITE_OK) break;
    sqlite3_bind_int64(statement, 1, rowid);
    code = sqlite3_step(statement);
    sqlite3_finalize(statement);
    if (code != SQLITE_DONE) break;
  }
  if (code != SQLITE_OK && code != SQLITE_DONE) {
    absl::Status status = SqliteStatus(db_, code, "quarantine corrupt job records", path_);
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  code = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
  return SqliteStatus(db_, code, "quarantine corrupt job records", path_);
}

absl::Status JobStore::AddEndColumns() {
  // Present already (a new table, or one migrated before)?
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(db_, "SELECT ended, end_ms FROM jobs LIMIT 0", -1, &statement, nullptr);
  sqlite3_finalize(statement);
  if (code == SQLITE_OK) return absl::OkStatus();
  code = sqlite3_exec(db_,
                      "BEGIN IMMEDIATE;"
                      "ALTER TABLE jobs ADD COLUMN ended INTEGER NOT NULL DEFAULT 0;"
                      "ALTER TABLE jobs ADD COLUMN end_ms INTEGER NOT NULL DEFAULT 0;",
                      nullptr, nullptr, nullptr);
  if (code != SQLITE_OK) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return SqliteStatus(db_, code, "add the end columns", path_);
  }
  // Filled from each record; a corrupt one stays "not ended" (kept).
  std::vector<std::tuple<std::string, bool, int64_t>> ends;
  code = sqlite3_prepare_v2(db_, "SELECT id, record FROM jobs", -1, &statement, nullptr);
  while (code == SQLITE_OK && (code = sqlite3_step(statement)) == SQLITE_ROW) {
    moex::v1::Job job;
    if (!job.ParseFromArray(sqlite3_column_blob(statement, 1), sqlite3_column_bytes(statement, 1))) continue;
    ends.emplace_back(job.id(), Ended(job), job.end_time_unix_ms());
    code = SQLITE_OK;
  }
  sqlite3_finalize(statement);
  for (const auto& [id, ended, end_ms] : ends) {
    code = sqlite3_prepare_v2(db_, "UPDATE jobs SET ended = ?, end_ms = ? WHERE id = ?", -1, &statement, nullptr);
    if (code != SQLITE_OK) break;
    sqlite3_bind_int(statement, 1, ended ? 1 : 0);
    sqlite3_bind_int64(statement, 2, end_ms);
    sqlite3_bind_text(statement, 3, id.c_str(), -1, SQLITE_TRANSIENT);
    code = sqlite3_step(statement);
    sqlite3_finalize(statement);
    if (code != SQLITE_DONE) break;
  }
  if (code != SQLITE_OK && code != SQLITE_DONE) {
    absl::Status status = SqliteStatus(db_, code, "fill the end columns", path_);
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }
  code = sqlite3_exec(db_, "COMMIT; CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (ended, end_ms, id);", nullptr,
                      nullptr, nullptr);
  return SqliteStatus(db_, code, "add the end columns", path_);
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Put(const moex::v1::Job& job, pid_t process_group) {
  std::string record;
  if (!job.SerializeToString(&record)) return absl::InternalError(StrCat("cannot serialise job ", job.id()));
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(
      db_,
      "INSERT OR REPLACE INTO jobs (id, submit_ms, process_group, record, ended, end_ms) VALUES (?, ?, ?, ?, ?, ?)",
      -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, StrCat("store job ", job.id()), path_);
  sqlite3_bind_text(statement, 1, job.id().c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(statement, 2, job.submit_time_unix_ms());
  sqlite3_bind_int64(statement, 3, process_group);
  sqlite3_bind_blob(statement, 4, record.data(), static_cast<int>(record.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(statement, 5, Ended(job) ? 1 : 0);
  sqlite3_bind_int64(statement, 6, job.end_time_unix_ms());
  code = sqlite3_step(statement);
  sqlite3_finalize(statement);
  return SqliteStatus(db_, code, StrCat("store job ", job.id()), path_);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadAll() {
  return LoadPage(std::numeric_limits<int64_t>::min(), "", -1);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadPage(int64_t after_ms, const std::string& after_id, int limit) {
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(db_,
                                "SELECT id, process_group, record FROM jobs WHERE submit_ms > ?1 OR (submit_ms = ?1 "
                                "AND id > ?2) ORDER BY submit_ms, id LIMIT ?3",
                                -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, "load jobs", path_);
  sqlite3_bind_int64(statement, 1, after_ms);
  sqlite3_bind_text(statement, 2, after_id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(statement, 3, limit);
  std::vector<StoredJob> jobs;
  while ((code = sqlite3_step(statement)) == SQLITE_ROW) {
    StoredJob stored;
    const void* blob = sqlite3_column_blob(statement, 2);
    int bytes = sqlite3_column_bytes(statement, 2);
    if (!stored.job.ParseFromArray(blob, bytes)) {
      std::string id = reinterpret_cast<const char*>(sqlite3_column_text(statement, 0));
      sqlite3_finalize(statement);
      return absl::DataLossError(StrCat(path_, ": the record of job ", id, " is corrupt"));
    }
    stored.process_group = static_cast<pid_t>(sqlite3_column_int64(statement, 1));
    jobs.push_back(std::move(stored));
  }
  sqlite3_finalize(statement);
  if (code != SQLITE_DONE) return SqliteStatus(db_, code, "load jobs", path_);
  return jobs;
}

absl::StatusOr<moex::v1::Job> JobStore::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(db_, "SELECT record FROM jobs WHERE id = ?", -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, StrCat("load job ", id), path_);
  sqlite3_bind_text(statement, 1, id.c_str(), -1, SQLITE_TRANSIENT);
  code = sqlite3_step(statement);
  if (code == SQLITE_DONE) {
    sqlite3_finalize(statement);
    return absl::NotFoundError(StrCat("no job '", id, "'"));
  }
  if (code != SQLITE_ROW) {
    absl::Status status = SqliteStatus(db_, code, StrCat("load job ", id), path_);
    sqlite3_finalize(statement);
    return status;
  }
  moex::v1::Job job;
  const bool parsed = job.ParseFromArray(sqlite3_column_blob(statement, 0), sqlite3_column_bytes(statement, 0));
  sqlite3_finalize(statement);
  if (!parsed) return absl::DataLossError(StrCat(path_, ": the record of job ", id, " is corrupt"));
  return job;
}

absl::StatusOr<std::vector<std::string>> JobStore::Expired(int keep_newest, int64_t ended_before_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  // Ended rows by end, newest first: those past the newest `keep_newest`, or
  // ended before the cutoff.
  int code = sqlite3_prepare_v2(db_,
                                "SELECT id FROM (SELECT id, end_ms, ROW_NUMBER() OVER (ORDER BY end_ms DESC, id DESC) "
                                "AS newest FROM jobs WHERE ended = 1) WHERE (?1 > 0 AND newest > ?1) OR end_ms < ?2 "
                                "ORDER BY end_ms, id",
                                -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, "find the jobs retention drops", path_);
  sqlite3_bind_int64(statement, 1, keep_newest);
  sqlite3_bind_int64(statement, 2, ended_before_ms);
  std::vector<std::string> ids;
  while ((code = sqlite3_step(statement)) == SQLITE_ROW) {
    ids.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(statement, 0)));
  }
  sqlite3_finalize(statement);
  if (code != SQLITE_DONE) return SqliteStatus(db_, code, "find the jobs retention drops", path_);
  return ids;
}

absl::Status JobStore::Delete(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(db_, "DELETE FROM jobs WHERE id = ?", -1, &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, StrCat("delete job ", id), path_);
  sqlite3_bind_text(statement, 1, id.c_str(), -1, SQLITE_TRANSIENT);
  code = sqlite3_step(statement);
  sqlite3_finalize(statement);
  return SqliteStatus(db_, code, StrCat("delete job ", id), path_);
}

}  // namespace moex::cluster
