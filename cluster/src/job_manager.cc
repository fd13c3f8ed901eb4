#include "moex/cluster/job_manager.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "moex/cluster/client_files.h"
#include "moex/cluster/state_dir.h"
#include "moex/core/echo.h"
#include "moex/core/host_memory.h"
#include "moex/core/log.h"
#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"

namespace moex::cluster {

using moex::v1::Job;
using moex::v1::JobState;

bool IsTerminal(JobState state) {
  return state == moex::v1::JOB_STATE_SUCCEEDED || state == moex::v1::JOB_STATE_FAILED ||
         state == moex::v1::JOB_STATE_CANCELLED;
}

int CurrentAttemptNumber(const moex::v1::Job& job) { return std::max(1, job.attempts_size()); }

int World(const moex::v1::Job& job) { return job.world_size() > 0 ? job.world_size() : job.spec().world_size(); }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

namespace {

std::string NewJobId() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  char buffer[32];
  snprintf(buffer, sizeof(buffer), "j-%012llx", static_cast<unsigned long long>(rng() & 0xffffffffffffULL));
  return buffer;
}

std::string SelfExecutable() {
  std::error_code error;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? "moex" : self.string();
}

}  // namespace

bool JobGroupAlive(pid_t group, const std::string& job_id) {
  if (group <= 0 || !GroupAlive(group)) return false;
  // Its leader (mpirun, srun) carries the ranks' command line. A group
  // whose leader is gone but members remain is still the job's: Linux
  // gives no new process an id that is an existing group's.
  if (ProcessRunning(group)) return CommandLineHas(group, StrCat("worker --job-id ", job_id, " "));
  return true;
}

absl::Status CheckJobIdLength(std::string_view id) {
  if (id.size() <= kEchoBytes) return absl::OkStatus();
  return absl::NotFoundError(StrCat("no job '", Echo(id), "'"));
}

pid_t JobManager::GroupToSignal(const Entry& entry) {
  return JobGroupAlive(entry.process_group, entry.job.id()) ? entry.process_group : 0;
}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(ControllerOptions options) {
  if (options.state_dir.empty()) return absl::InvalidArgumentError("--state-dir is required");
  if (options.moex_binary.empty()) options.moex_binary = SelfExecutable();
  MOEX_ASSIGN_OR_RETURN(options.limits.data_roots, CanonicalDataRoots(options.limits.data_roots));
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, JobStore::Open(options.state_dir));
  for (const std::string& bad : store->quarantined()) {
    log::Error(StrCat(store->path(), ": ", bad,
                      "; moved, bytes intact, to its quarantine table (the other jobs start as usual)"));
  }
  MOEX_RETURN_IF_ERROR(MakePrivateDirectory((std::filesystem::path(options.state_dir) / "logs").string(), "the logs dir"));
  MOEX_ASSIGN_OR_RETURN(StateDirIdentity identity, StateDirIdentity::Capture(options.state_dir, {"jobs.db", "logs"}));
  MOEX_ASSIGN_OR_RETURN(std::vector<StoredJob> stored, store->LoadAll());
  if (options.launcher.work_dir.empty()) {
    options.launcher.work_dir = (std::filesystem::path(options.state_dir) / "launch").string();
  }
  MOEX_ASSIGN_OR_RETURN(RankKey rank_key, RankKey::LoadOrCreate(options.state_dir));
  MOEX_ASSIGN_OR_RETURN(std::unique_ptr<launcher::Launcher> launcher, launcher::MakeLauncher(options.launcher));
  MOEX_RETURN_IF_ERROR(launcher->CheckReady());
  auto manager =
      std::unique_ptr<JobManager>(new JobManager(std::move(options), std::move(store), std::move(launcher)));
  manager->state_dir_identity_ = std::move(identity);
  manager->rank_key_ = std::move(rank_key);
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) manager->this_host_ = host;
  for (StoredJob& s : stored) {
    Entry entry;
    entry.job = std::move(s.job);
    entry.process_group = s.process_group;
    const bool group_alive = entry.process_group > 0 && GroupAlive(entry.process_group);
    const bool ours = JobGroupAlive(entry.process_group, entry.job.id());
    if (!IsTerminal(entry.job.state()) && ours) {
      // Still running: wait for its ranks to report back in.
      entry.adopted = true;
      entry.awaiting_readoption = true;
      entry.adopted_at = Clock::now();
      entry.job.set_message(StrCat("the controller restarted; waiting for the ranks to report back in (",
                                   manager->options_.heartbeat_timeout_seconds, " s)"));
      log::Info("job adopted: its process group still runs", {{"job_id", entry.job.id()},
                                                             {"process_group", std::to_string(entry.process_group)}});
      MOEX_RETURN_IF_ERROR(manager->store_->Put(entry.job, entry.process_group));
    } else if (!IsTerminal(entry.job.state())) {
      // Its processes are gone and nobody saw how they ended.
      entry.job.set_state(moex::v1::JOB_STATE_FAILED);
      entry.job.set_message(StrCat("the controller stopped while this job was ",
                                   entry.job.ranks_registered() == World(entry.job) ? "running" : "starting",
                                   "; its processes had ended when the controller restarted, and how they ended "
                                   "was not observed",
                                   group_alive ? StrCat(" (its process group id ", entry.process_group,
                                                        " now belongs to another program, left alone)")
                                               : ""));
      entry.process_group = 0;  // never signalled again
      entry.job.set_end_reason(moex::v1::END_REASON_CONTROLLER_RESTART);
      // What the engine may still hold of it (a Slurm allocation) is released.
      manager->launcher_->Stop(entry.job.id(), CurrentAttemptNumber(entry.job), 0, /*force=*/true);
      entry.job.set_end_time_unix_ms(NowMs());
      MOEX_RETURN_IF_ERROR(manager->store_->Put(entry.job, entry.process_group));
      manager->CleanUpHosts(entry.job, 0);
    }
    if (IsTerminal(entry.job.state())) ++manager->ended_by_state_[entry.job.state()];
    manager->jobs_[entry.job.id()] = std::move(entry);
  }
  manager->writer_ = std::thread([m = manager.get()] { m->WriterLoop(); });
  manager->monitor_ = std::thread([m = manager.get()] { m->MonitorLoop(); });
  return manager;
}

JobManager::~JobManager() { Shutdown(); }

void JobManager::SetAdvertisedAddress(std::string address) {
  std::lock_guard<std::mutex> lock(mutex_);
  options_.advertise = std::move(address);
}

void JobManager::Notify(const std::string& id) {
  std::vector<std::function<void(const Job&)>> callbacks;
  Job snapshot;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return;
    snapshot = it->second.job;
    for (auto& [handle, subscription] : subscriptions_) {
      if (subscription.job_id == id) callbacks.push_back(subscription.on_change);
    }
  }
  for (auto& callback : callbacks) callback(snapshot);
}

JobManager::Figures JobManager::MetricsFigures() {
  std::lock_guard<std::mutex> lock(mutex_);
  Figures figures;
  figures.ended = counters_.ended;
  figures.restarts = counters_.restarts;
  figures.rebalances = counters_.rebalances;
  figures.experts_moved = counters_.experts_moved;
  figures.jobs_by_state = ended_by_state_;
  figures.jobs_in_memory = static_cast<int64_t>(jobs_.size());
  const Clock::time_point now = Clock::now();
  for (const auto& [id, entry] : jobs_) {
    if (IsTerminal(entry.job.state())) continue;
    ++figures.jobs_by_state[entry.job.state()];
    std::map<int, double> ages;
    for (const auto& [rank, seen] : entry.last_heartbeat) {
      ages[rank] = std::chrono::duration<double>(now - seen).count();
    }
    figures.active.emplace_back(entry.job, std::move(ages));
  }
  return figures;
}

void JobManager::SignalLocalRanks(const Entry& entry, int signal) {
  // Open MPI gives ranks process groups of their own. A pid is only ever
  // this host's: ranks on other hosts are reached through the launcher.
  for (const auto& rank : entry.job.ranks()) {
    if (rank.host() != this_host_) continue;
    SignalIfCommandLineHas(rank.pid(), StrCat("--job-id ", entry.job.id()), signal);
  }
}

void JobManager::KillProcesses(Entry& entry) {
  // No process is left behind: the launcher ends the attempt on every host
  // (mpirun's group, Slurm's scancel); this host's ranks are also killed
  // by pid; the hosts' cleanup step then kills what is left there.
  launcher_->Stop(entry.job.id(), CurrentAttemptNumber(entry.job), GroupToSignal(entry), /*force=*/true);
  SignalLocalRanks(entry, SIGKILL);
  // Ranks that never registered have no pid on record (the chaos case of an
  // unreachable controller left one running under load): when every rank
  // runs here, every process of this job on this host, by its command line.
  if (launcher_->RanksAreLocal()) (void)SignalEveryCommandLineWith(StrCat("worker --job-id ", entry.job.id(), " "), SIGKILL);
}

void JobManager::Finish(Entry& entry, JobState state, std::string message, moex::v1::EndReason reason) {
  if (IsTerminal(entry.job.state())) return;
  entry.job.set_state(state);
  entry.job.set_message(std::move(message));
  entry.job.set_end_time_unix_ms(NowMs());
  entry.job.set_end_reason(reason);
  ++ended_by_state_[state];
  ++counters_.ended[{state, reason}];
  {
    const moex::v1::JobMetrics& m = entry.job.metrics();
    log::Write(state == moex::v1::JOB_STATE_FAILED ? log::Level::kError : log::Level::kInfo, "job ended",
               {{"job_id", entry.job.id()},
                {"state", moex::v1::JobState_Name(state)},
                {"reason", moex::v1::EndReason_Name(reason)},
                {"attempt", std::to_string(CurrentAttemptNumber(entry.job))},
                {"steps_done", std::to_string(m.steps_done())},
                {"tokens_per_second", StrCat(m.tokens_per_second())},
                {"why", Echo(entry.job.message())}});
  }
  KillProcesses(entry);
  CleanUpHosts(entry.job, 0);
  CloseAttempt(entry, reason, entry.job.message(), {});
  Persist(entry);
  pending_notifications_.push_back(entry.job.id());
}


absl::StatusOr<Job> JobManager::Submit(moex::v1::JobSpec spec) {
  SpecLimits limits = options_.limits;
  // Ranks on this host: their experts must fit in its memory.
  if (launcher_->RanksAreLocal()) limits.local_memory_bytes = MemAvailableBytes();
  MOEX_RETURN_IF_ERROR(ValidateAndNormalise(&spec, limits));
  {
    // What the spec asks of the hosts, checked by the launcher (Slurm asks
    // sinfo): not under the lock.
    Job probe;
    *probe.mutable_spec() = spec;
    MOEX_RETURN_IF_ERROR(launcher_->CheckRequest(LaunchRequestFor(probe)));
  }
  // Its first placement, from the model's config: read here, off the lock
  // (a placement call would otherwise read it under the lock). An error is
  // left for the ranks' placement call to answer, as before.
  std::optional<moex::v1::Placement> initial;
  if (!spec.has_bench()) {
    if (absl::StatusOr<moex::v1::Placement> made = InitialPlacement(spec, spec.world_size()); made.ok()) {
      initial = std::move(*made);
    }
  }
  // A job recorded in a deleted database would be lost at the next start.
  MOEX_RETURN_IF_ERROR(CheckStateDir());
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return absl::UnavailableError("the controller is shutting down");
    int active = 0;
    for (auto& [job_id, e] : jobs_) active += IsTerminal(e.job.state()) ? 0 : 1;
    if (active >= options_.max_concurrent_jobs) {
      return absl::ResourceExhaustedError(StrCat(active, " jobs are active, the limit is ",
                                                 options_.max_concurrent_jobs, "; retry when one ends"));
    }
    id = NewJobId();
    while (jobs_.count(id) || store_->Get(id).ok()) id = NewJobId();
    Entry& entry = jobs_[id];
    entry.job.set_id(id);
    entry.job.set_state(moex::v1::JOB_STATE_PENDING);
    *entry.job.mutable_spec() = spec;
    entry.job.set_submit_time_unix_ms(NowMs());
    entry.job.set_log_path((std::filesystem::path(options_.state_dir) / "logs" / (id + ".log")).string());
    entry.job.set_message("launching");
    entry.job.set_world_size(spec.world_size());
    if (initial) *entry.job.mutable_placement() = std::move(*initial);
    moex::v1::Attempt* attempt = entry.job.add_attempts();
    attempt->set_number(1);
    attempt->set_world_size(spec.world_size());
    attempt->set_start_time_unix_ms(entry.job.submit_time_unix_ms());
    // A job nobody could find after a restart is lost work: the record is
    // on disk before anything is launched, or the job is refused.
    absl::Status recorded = store_->Put(entry.job, 0);
    if (!recorded.ok()) {
      jobs_.erase(id);
      return absl::ResourceExhaustedError(StrCat("cannot record the job in the state dir ", options_.state_dir, " (",
                                           recorded.message(), "); nothing was launched: free space or fix the "
                                           "state dir, then submit again"));
    }
    log::Info("job submitted", {{"job_id", id},
                                {"name", spec.name()},
                                {"model", Echo(spec.model())},
                                {"world_size", std::to_string(spec.world_size())},
                                {"steps", std::to_string(spec.steps())},
                                {"device", spec.device()}});
    absl::Status launched = Launch(entry);
    if (!launched.ok()) {
      Finish(entry, moex::v1::JOB_STATE_FAILED, StrCat("could not start the job: ", launched.message()),
             moex::v1::END_REASON_LAUNCHER_ERROR);
    } else {
      entry.job.set_message(StrCat("waiting for ", spec.world_size(), " ranks to register"));
      PersistNow(entry);
      log::Info("job launched", {{"job_id", id}, {"attempt", "1"}, {"process_group", std::to_string(entry.process_group)}});
    }
  }
  Notify(id);
  return Get(id);
}

std::string JobManager::WeightCacheDir(const Job& job) const {
  if (job.spec().max_restarts() == 0) return "";
  return launcher::JobWeightCacheDir(options_.weight_cache_root, job.id());
}

void JobManager::CleanUpHosts(const Job& job, int attempt) {
  launcher::HostCleanupRequest request;
  request.job_id = job.id();
  request.attempt = attempt;
  request.weight_cache_root = options_.weight_cache_root;
  // Where its ranks ran (every host the launcher has when some never said),
  // less the hosts lost: nothing can be run there.
  std::vector<std::string> hosts, lost;
  for (const auto& rank : job.ranks()) hosts.push_back(rank.host());
  if (job.ranks_size() < World(job)) hosts.clear();
  for (const auto& a : job.attempts()) lost.insert(lost.end(), a.lost_hosts().begin(), a.lost_hosts().end());
  std::sort(hosts.begin(), hosts.end());
  hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
  cleaner_->Enqueue(std::move(request), job.log_path(), std::move(hosts), std::move(lost));
}

launcher::LaunchRequest JobManager::LaunchRequestFor(const Job& job) const {
  launcher::LaunchRequest request;
  request.job_id = job.id().empty() ? "j-000000000000" : job.id();
  request.attempt = CurrentAttemptNumber(job);
  request.world_size = World(job);
  request.ranks_per_host = job.spec().ranks_per_host();
  request.device = job.spec().device().empty() ? "cpu" : job.spec().device();
  request.hosts.assign(job.spec().hosts().begin(), job.spec().hosts().end());
  for (const auto& a : job.attempts()) {
    request.exclude_hosts.insert(request.exclude_hosts.end(), a.lost_hosts().begin(), a.lost_hosts().end());
  }
  request.log_path = job.log_path();
  return request;
}

absl::Status JobManager::Launch(Entry& entry) {
  std::string controller = options_.advertise.empty() ? options_.listen : options_.advertise;
  launcher::LaunchRequest request = LaunchRequestFor(entry.job);
  // The job id on every rank's command line: `ps` finds every process of it
  // ("worker --job-id J "), and of an attempt ("worker --job-id J --attempt N ").
  request.rank_argv = {options_.moex_binary, "worker", "--job-id", entry.job.id(),
                       "--attempt", std::to_string(std::max(1, entry.job.attempts_size())), "--controller", controller};
  if (!options_.token.empty()) request.extra_env.push_back(StrCat("MOEX_TOKEN=", options_.token));
  // The job's ranks, and only they, may make its rank calls.
  request.extra_env.push_back(StrCat(kRankSecretEnv, "=", rank_key_.SecretFor(entry.job.id())));
  if (!options_.tls_cert.empty()) {
    // Ranks trust the controller's certificate: it is its own CA or is signed
    // by the client CA; with mTLS they present it back as their identity.
    request.extra_env.push_back(StrCat("MOEX_TLS_CA=", options_.tls_client_ca.empty() ? options_.tls_cert : options_.tls_client_ca));
    if (!options_.tls_client_ca.empty()) {
      request.extra_env.push_back(StrCat("MOEX_TLS_CERT=", options_.tls_cert));
      request.extra_env.push_back(StrCat("MOEX_TLS_KEY=", options_.tls_key));
    }
  }
  {
    // The log is made here, its owner's alone (a job's output is nobody
    // else's business); the launcher and the cleanup append to it.
    const int log = open(request.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log < 0) return absl::FailedPreconditionError(StrCat("cannot open the log '", request.log_path, "': ", std::strerror(errno)));
    close(log);
    std::error_code size_error;
    const auto size = std::filesystem::file_size(request.log_path, size_error);
    entry.log_offset = size_error ? 0 : static_cast<int64_t>(size);
  }
  absl::StatusOr<launcher::Launched> launched = launcher_->Launch(request);
  if (!launched.ok()) return launched.status();
  {
    std::ofstream log(request.log_path, std::ios::app);
    log << "moex serve: launched job " << entry.job.id() << " through " << launcher_->name() << ": "
        << absl::StrJoin(launched->argv, " ") << "\n";
  }
  entry.process_group = launched->process_group;
  entry.launched = Clock::now();
  job_by_group_[launched->process_group] = entry.job.id();
  children_.insert(launched->process_group);
  if (entry.job.attempts_size() > 0) entry.job.mutable_attempts(entry.job.attempts_size() - 1)->set_launcher(launcher_->name());
  return absl::OkStatus();
}

absl::StatusOr<Job> JobManager::Get(const std::string& id) {
  MOEX_RETURN_IF_ERROR(CheckJobIdLength(id));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) return it->second.job;
  }
  // An ended job no longer held in memory.
  return store_->Get(id);
}

size_t JobManager::JobsInMemory() {
  std::lock_guard<std::mutex> lock(mutex_);
  return jobs_.size();
}

void JobManager::EvictEnded() {
  std::vector<std::pair<int64_t, std::string>> ended;
  for (auto& [id, entry] : jobs_) {
    if (IsTerminal(entry.job.state())) ended.push_back({entry.job.end_time_unix_ms(), id});
  }
  if (static_cast<int>(ended.size()) <= options_.max_ended_in_memory) return;
  std::set<std::string> watched;
  for (auto& [handle, subscription] : subscriptions_) watched.insert(subscription.job_id);
  std::sort(ended.begin(), ended.end());
  size_t excess = ended.size() - static_cast<size_t>(std::max(0, options_.max_ended_in_memory));
  for (size_t i = 0; i < ended.size() && excess > 0; ++i) {
    auto it = jobs_.find(ended[i].second);
    if (it->second.unsaved || watched.count(it->first)) continue;  // not on disk yet, or watched: later
    for (auto group = job_by_group_.begin(); group != job_by_group_.end();) {
      group = group->second == it->first ? job_by_group_.erase(group) : std::next(group);
    }
    jobs_.erase(it);
    --excess;
  }
}

std::vector<Job> JobManager::List() {
  // The store has every job; memory has the newest state of those it holds.
  absl::StatusOr<std::vector<StoredJob>> stored = store_->LoadAll();
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Job> jobs;
  if (stored.ok()) {
    for (StoredJob& s : *stored) {
      if (!jobs_.count(s.job.id())) jobs.push_back(std::move(s.job));
    }
  }
  for (auto& [id, entry] : jobs_) jobs.push_back(entry.job);
  std::sort(jobs.begin(), jobs.end(), [](const Job& a, const Job& b) {
    return a.submit_time_unix_ms() != b.submit_time_unix_ms() ? a.submit_time_unix_ms() < b.submit_time_unix_ms()
                                                              : a.id() < b.id();
  });
  return jobs;
}

absl::StatusOr<std::vector<Job>> JobManager::ListPage(int64_t after_ms, const std::string& after_id, int limit) {
  // Every job has its row from submission on; memory may hold a newer state.
  absl::StatusOr<std::vector<StoredJob>> stored = store_->LoadPage(after_ms, after_id, limit);
  if (!stored.ok()) return stored.status();
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Job> jobs;
  jobs.reserve(stored->size());
  for (StoredJob& s : *stored) {
    auto it = jobs_.find(s.job.id());
    jobs.push_back(it != jobs_.end() ? it->second.job : std::move(s.job));
  }
  return jobs;
}

absl::StatusOr<Job> JobManager::Cancel(const std::string& id) {
  MOEX_RETURN_IF_ERROR(CheckJobIdLength(id));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) return store_->Get(id);  // ended long ago: nothing to cancel
    Entry& entry = it->second;
    if (IsTerminal(entry.job.state())) return entry.job;  // cancelling an ended job changes nothing
    if (!entry.cancel_requested) {
      entry.cancel_requested = true;
      entry.term_sent = Clock::now();
      entry.job.set_message(StrCat("cancelling: SIGTERM sent, SIGKILL after ", options_.cancel_grace_seconds, " s"));
      log::Info("job cancel requested", {{"job_id", id}, {"grace_seconds", StrCat(options_.cancel_grace_seconds)}});
      launcher_->Stop(id, CurrentAttemptNumber(entry.job), GroupToSignal(entry), /*force=*/false);
      SignalLocalRanks(entry, SIGTERM);
      Persist(entry);
    }
  }
  Notify(id);
  return Get(id);
}

absl::StatusOr<std::string> JobManager::LogPath(const std::string& id) {
  MOEX_ASSIGN_OR_RETURN(Job job, Get(id));
  return job.log_path();
}

absl::StatusOr<int64_t> JobManager::Subscribe(const std::string& id,
                                              std::function<void(const Job&)> on_change) {
  MOEX_RETURN_IF_ERROR(CheckJobIdLength(id));
  int64_t handle;
  bool held;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    handle = next_subscription_++;
    held = jobs_.count(id) > 0;
    if (held) subscriptions_[handle] = {id, on_change};
  }
  if (held) {
    Notify(id);
    return handle;
  }
  // Ended and no longer in memory: its final state, once.
  MOEX_ASSIGN_OR_RETURN(Job job, store_->Get(id));
  on_change(job);
  return handle;
}

void JobManager::Unsubscribe(int64_t handle) {
  std::lock_guard<std::mutex> lock(mutex_);
  subscriptions_.erase(handle);
}

void JobManager::MonitorLoop() {
  // Retention runs at once, then once a minute; a backlog (a first run on a
  // large store) goes 64 jobs a second, so that the loop is never held long.
  Clock::time_point next_retention = Clock::now();
  while (true) {
    std::vector<std::string> notify;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) break;
    }
    if (Clock::now() >= next_retention) {
      bool more = false;
      ApplyRetention(64, &more);
      next_retention = Clock::now() + (more ? std::chrono::seconds(1) : std::chrono::seconds(60));
    }
    ReapLaunches();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& [id, entry] : jobs_) {
        if (entry.unsaved && !entry.queued && Clock::now() - entry.saved_at >= std::chrono::seconds(1)) Persist(entry);
      }
      EvictEnded();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto now = Clock::now();
      auto seconds = [now](Clock::time_point since) { return std::chrono::duration<double>(now - since).count(); };
      for (auto& [id, entry] : jobs_) {
        if (IsTerminal(entry.job.state()) || entry.process_group <= 0) continue;
        if (entry.adopted && !JobGroupAlive(entry.process_group, entry.job.id())) {
          entry.process_group = 0;  // gone, or another program's now: never signalled
          // Ended while nobody could reap it: judge by what rank 0 reported.
          if (entry.cancel_requested) {
            Finish(entry, moex::v1::JOB_STATE_CANCELLED, "cancelled by request; every process of the job has ended",
                   moex::v1::END_REASON_CANCELLED);
          } else if (entry.job.metrics().steps_done() >= entry.job.spec().steps()) {
            Finish(entry, moex::v1::JOB_STATE_SUCCEEDED,
                   StrCat("succeeded: all ", entry.job.spec().steps(), " steps reported (its exit status was not "
                          "observable after the controller restart)"),
                   moex::v1::END_REASON_SUCCEEDED);
          } else {
            Finish(entry, moex::v1::JOB_STATE_FAILED,
                   StrCat("ended after ", entry.job.metrics().steps_done(), " of ", entry.job.spec().steps(),
                          " steps while adopted after a controller restart; log: ", entry.job.log_path()),
                   moex::v1::END_REASON_CONTROLLER_RESTART);
          }
          continue;
        }
        if (entry.adopted && static_cast<int>(entry.last_heartbeat.size()) < World(entry.job) &&
            seconds(entry.adopted_at) > options_.heartbeat_timeout_seconds) {
          std::vector<int> silent;
          for (int r = 0; r < World(entry.job); ++r) {
            if (!entry.last_heartbeat.count(r)) silent.push_back(r);
          }
          Finish(entry, moex::v1::JOB_STATE_FAILED,
                 StrCat("the controller restarted and rank(s) ", absl::StrJoin(silent, ", "),
                        " did not report back in within ", options_.heartbeat_timeout_seconds, " s"),
                 moex::v1::END_REASON_CONTROLLER_RESTART);
          continue;
        }
        if (entry.cancel_requested) {
          if (!entry.kill_sent && seconds(entry.term_sent) > options_.cancel_grace_seconds) {
            launcher_->Stop(id, CurrentAttemptNumber(entry.job), GroupToSignal(entry), /*force=*/true);
            entry.kill_sent = true;
          }
          continue;
        }
        if (entry.job.state() == moex::v1::JOB_STATE_PENDING && seconds(entry.launched) > options_.start_timeout_seconds) {
          std::vector<int> missing;
          for (int r = 0; r < World(entry.job); ++r) {
            bool seen = false;
            for (const auto& rank : entry.job.ranks()) seen |= rank.rank() == r;
            if (!seen) missing.push_back(r);
          }
          RankFailed(entry, moex::v1::END_REASON_START_TIMEOUT,
                     StrCat("rank(s) ", absl::StrJoin(missing, ", "), " never registered within the start timeout of ",
                            options_.start_timeout_seconds, " s; log: ", entry.job.log_path()),
                     missing);
          continue;
        }
        if (entry.job.state() == moex::v1::JOB_STATE_RUNNING) {
          for (auto& [rank, last] : entry.last_heartbeat) {
            if (seconds(last) > options_.heartbeat_timeout_seconds && !entry.done_ranks.count(rank)) {
              SilentRank(entry, rank, seconds(last));
              break;
            }
          }
        }
      }
      notify.swap(pending_notifications_);
    }
    for (const std::string& id : notify) Notify(id);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void JobManager::Shutdown() {
  std::vector<std::string> notify;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, entry] : jobs_) {
      if (!IsTerminal(entry.job.state())) {
        Finish(entry, moex::v1::JOB_STATE_FAILED, "the controller shut down while the job ran; its processes were stopped",
               moex::v1::END_REASON_CONTROLLER_SHUTDOWN);
      }
    }
    notify.swap(pending_notifications_);
  }
  if (monitor_.joinable()) monitor_.join();
  // Every record queued (the jobs just stopped) reaches the disk first.
  {
    std::lock_guard<std::mutex> lock(mutex_);
    writer_stop_ = true;
  }
  write_wanted_.notify_all();
  if (writer_.joinable()) writer_.join();
  // The hosts of the jobs just stopped are cleaned before the controller goes.
  cleaner_->Drain();
  // Reap the launches that were killed so nothing lingers as a zombie (only
  // ours: a command another thread runs reaps its own).
  for (int round = 0; round < 100; ++round) {
    std::set<pid_t> left;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (pid_t pid : children_) {
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == 0) left.insert(pid);
      }
      children_.swap(left);
      if (children_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& id : notify) Notify(id);
}

}  // namespace moex::cluster
