#include "moex/cluster/job_store.h"

#include <limits>

#include <sqlite3.h>

#include <filesystem>

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
  return store;
}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::Status JobStore::Put(const moex::v1::Job& job, pid_t process_group) {
  std::string record;
  if (!job.SerializeToString(&record)) return absl::InternalError(StrCat("cannot serialise job ", job.id()));
  std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = nullptr;
  int code = sqlite3_prepare_v2(
      db_, "INSERT OR REPLACE INTO jobs (id, submit_ms, process_group, record) VALUES (?, ?, ?, ?)", -1,
      &statement, nullptr);
  if (code != SQLITE_OK) return SqliteStatus(db_, code, StrCat("store job ", job.id()), path_);
  sqlite3_bind_text(statement, 1, job.id().c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(statement, 2, job.submit_time_unix_ms());
  sqlite3_bind_int64(statement, 3, process_group);
  sqlite3_bind_blob(statement, 4, record.data(), static_cast<int>(record.size()), SQLITE_TRANSIENT);
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

}  // namespace moex::cluster
