// The controller's state: every job, its process group, its ranks. Jobs are
// launched as `mpirun … moex worker --job-id ID --controller ADDR`, from an
// argument vector, in their own process group, output to a per-job log.
//
// States: PENDING (launched, waiting for every rank to register) -> RUNNING
// -> SUCCEEDED | FAILED | CANCELLED; PENDING may also end FAILED or
// CANCELLED. A terminal state is never left, and no job stays PENDING past
// the start timeout or RUNNING past a silent rank's heartbeat timeout.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/placement/load_stats.h"
#include "moex/cluster/job_cleaner.h"
#include "moex/cluster/job_store.h"
#include "moex/cluster/rank_secret.h"
#include "moex/launcher/launcher.h"
#include "moex/cluster/spec_validation.h"
#include "moex/cluster/state_dir.h"
#include "moex/v1/cluster.pb.h"
#include "moex/v1/job.pb.h"
#include "moex/v1/placement.pb.h"

namespace moex::cluster {

struct ControllerOptions {
  std::string state_dir;
  std::string listen = "127.0.0.1:50051";
  // Where ranks reach the controller; defaults to the address it listens on.
  std::string advertise;
  SpecLimits limits;
  int max_concurrent_jobs = 8;
  int max_streams = 256;  // WatchJob and GetJobLogs streams open at once
  double start_timeout_seconds = 60;
  double heartbeat_timeout_seconds = 30;
  double cancel_grace_seconds = 5;
  // Ended jobs kept in memory (the newest); older ones are answered from the
  // store, so the controller's memory does not grow with every job it ran.
  int max_ended_in_memory = 256;
  // Retention, so that the store and the logs stop growing: ended jobs past
  // the keep_jobs newest (by end), and those that ended over keep_days ago,
  // are deleted with their logs (0: no such bound). Never a job that has
  // not ended.
  int keep_jobs = 0;
  double keep_days = 0;
  // Jobs that may restart keep their ranks' loaded weights in
  // <root>/moex-weights-<uid>-<job id> (in memory under /dev/shm), read back
  // by a relaunch; removed when the job ends. Empty: no such cache.
  std::string weight_cache_root = "/dev/shm";
  std::string moex_binary;  // the `moex` that ranks run; defaults to this executable
  // How ranks are started on their hosts: mpirun (on this host, or over a
  // hostfile) or Slurm (launcher/launcher.h). Its work_dir defaults to
  // <state_dir>/launch.
  launcher::LauncherOptions launcher;
  std::string token;  // when set, every call but health must carry "authorization: Bearer <token>"
  // Serve an address other hosts can reach with neither a token nor client
  // certificates (mutual TLS): refused at start unless this says so.
  bool insecure = false;
  // TLS: the server's certificate and key; a client CA demands client
  // certificates (mutual TLS). Ranks get the CA (and, for mTLS, this
  // certificate and key as their client identity) through their environment.
  std::string tls_cert, tls_key, tls_client_ca;
  // HOST:PORT to serve Prometheus metrics at /metrics (metrics.h); empty: none.
  std::string metrics_listen;
};

bool IsTerminal(moex::v1::JobState state);
// Wall-clock milliseconds since the epoch, as the records keep times.
int64_t NowMs();
// Placement version 1 of a (non-bench) job over `world` ranks: its model's
// layer, contiguous, with the spec's redundant slots. Reads the model's
// config: called off the lock (at submit).
absl::StatusOr<moex::v1::Placement> InitialPlacement(const moex::v1::JobSpec& spec, int world);
// Ranks of the job's current attempt: spec.world_size until it shrank.
int World(const moex::v1::Job& job);
// Whether process group `group` still runs job `job_id`: alive, and its
// leader, if it still runs, is the job's launcher (its command line carries
// the ranks' `worker --job-id ID `), not a program given a recycled id.
bool JobGroupAlive(pid_t group, const std::string& job_id);
// The number of the job's current attempt (1 for a record without attempts).
int CurrentAttemptNumber(const moex::v1::Job& job);
// NOT_FOUND "no job 'ID… (N bytes)'" for an id longer than an error echoes
// whole (core/echo.h), which no job has: answered before any lookup, whose
// errors would echo all of it.
absl::Status CheckJobIdLength(std::string_view id);

class JobManager {
 public:
  // Opens the store. A job found PENDING or RUNNING from an earlier
  // controller whose process group still runs is adopted: it keeps its state
  // while its ranks report back in within the heartbeat timeout (then it is
  // followed as before; when its group ends, the steps rank 0 reported decide
  // SUCCEEDED or FAILED, since nobody can reap it). Otherwise it becomes
  // FAILED, saying so, and whatever is left of it is killed.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(ControllerOptions options);
  ~JobManager();

  // Must be set before the first Submit (the server learns its port late).
  void SetAdvertisedAddress(std::string address);

  absl::StatusOr<moex::v1::Job> Submit(moex::v1::JobSpec spec);
  absl::StatusOr<moex::v1::Job> Get(const std::string& id);
  std::vector<moex::v1::Job> List();
  // One page of List(): up to `limit` jobs after (after_ms, after_id) in
  // (submit time, id) order, each in its newest state.
  absl::StatusOr<std::vector<moex::v1::Job>> ListPage(int64_t after_ms, const std::string& after_id, int limit);
  // Jobs held in memory (the rest are in the store only).
  size_t JobsInMemory();
  absl::StatusOr<moex::v1::Job> Cancel(const std::string& id);
  absl::StatusOr<std::string> LogPath(const std::string& id);
  // Removes an ended job: its record, its log, its launch files; answers it
  // as it was. FAILED_PRECONDITION for a job that has not ended, UNAVAILABLE
  // while its final record is not on disk or its hosts are being cleaned
  // (retry), NOT_FOUND for an unknown one.
  // `wait_for_record`: an ended job whose final record is still being
  // written is waited for (up to 5 s; the API), else refused UNAVAILABLE
  // (retention, on the monitor thread, which must not wait).
  absl::StatusOr<moex::v1::Job> Delete(const std::string& id, bool wait_for_record = true);
  // Deletes what retention (keep_jobs, keep_days) drops, at most `at_most`
  // jobs; returns how many it deleted and sets `more` when it stopped short.
  int ApplyRetention(int at_most, bool* more = nullptr);
  // The job's newest published expert placement (version 1: contiguous).
  absl::StatusOr<moex::v1::Placement> GetPlacement(const std::string& id);
  // Plans a placement from the job's load window with `policy` (empty:
  // the job's) and publishes it as the next version. Refused while the
  // previous one is still migrating, before any load was reported, and for
  // a job that is not running.
  absl::StatusOr<moex::v1::Placement> Rebalance(const std::string& id, const std::string& policy);

  // Calls `on_change` with the current job at once and after every change;
  // returns a handle for Unsubscribe. Callbacks run without the lock held.
  absl::StatusOr<int64_t> Subscribe(const std::string& id, std::function<void(const moex::v1::Job&)> on_change);
  void Unsubscribe(int64_t handle);

  // Calls from a job's ranks. `attempt` is the launch the caller belongs to
  // (its `--attempt`, sent as the "moex-attempt" metadata; 0: unsaid, taken
  // as the current one). Each call is refused, changing nothing, when the
  // job has ended or `attempt` is not the current one (FAILED_PRECONDITION),
  // or when its rank is outside the current attempt's world, or its step is
  // negative, past the job's steps or behind what that rank (Heartbeat) or
  // rank 0 (ReportStep) said before in this attempt (INVALID_ARGUMENT); the
  // message names the job, the attempt, the rank and the bad value.
  absl::StatusOr<moex::v1::RegisterRankResponse> RegisterRank(const moex::v1::RegisterRankRequest& request,
                                                              int attempt = 0);
  absl::StatusOr<moex::v1::HeartbeatResponse> Heartbeat(const moex::v1::HeartbeatRequest& request, int attempt = 0);
  // Rank 0's figures and load; the answer carries the newest placement
  // version. May publish a placement (the job's rebalance threshold).
  absl::StatusOr<moex::v1::ReportStepResponse> ReportStep(const moex::v1::ReportStepRequest& request, int attempt = 0);
  // A rank says why it is failing (before it exits): kept with the attempt,
  // and what decides how the attempt ended (RANK_LOST for the ranks it was
  // waiting for, BAD_INPUT never retried) when the launch exits. Refused
  // (INVALID_ARGUMENT) for a reason a rank cannot give, or a waited-for rank
  // outside the attempt; a rank's second report is ignored.
  absl::Status ReportFailure(const moex::v1::ReportFailureRequest& request, int attempt = 0);

  // Stops every running job (FAILED, saying the controller shut down) and
  // the monitor.
  void Shutdown();

  // What `--metrics-listen` exposes of the jobs (metrics.h), copied under the
  // lock when Prometheus scrapes.
  struct Figures {
    // Every job the controller knows, by state: those in memory and the
    // ended ones only in the store.
    std::map<moex::v1::JobState, int64_t> jobs_by_state;
    // Since this controller started: jobs that ended, by state and reason,
    // relaunches after a failure, placement changes and the replicas they moved.
    std::map<std::pair<moex::v1::JobState, moex::v1::EndReason>, int64_t> ended;
    int64_t restarts = 0, rebalances = 0, experts_moved = 0;
    // Pending and running jobs, each with its ranks' heartbeat ages (seconds).
    std::vector<std::pair<moex::v1::Job, std::map<int, double>>> active;
    int64_t jobs_in_memory = 0;
  };
  Figures MetricsFigures();

  const ControllerOptions& options() const { return options_; }
  // Whether `presented` is job `job_id`'s rank secret (rank_secret.h).
  bool RankSecretOk(const std::string& job_id, std::string_view presented) const {
    return rank_key_.Check(job_id, presented);
  }
  // Every rank runs on the controller's host (mpirun without a hostfile).
  bool RanksAreLocal() const { return launcher_->RanksAreLocal(); }
  // Whether the state dir, its database and its logs are still the ones
  // opened at the start; Submit refuses jobs (FAILED_PRECONDITION naming
  // what is missing) while they are not.
  absl::Status CheckStateDir() const { return state_dir_identity_.Check(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    moex::v1::Job job;
    pid_t process_group = 0;
    Clock::time_point launched;
    std::map<int, Clock::time_point> last_heartbeat;  // by rank
    std::map<int, int64_t> heartbeat_step;  // by rank, this attempt's newest: steps never go back
    std::set<int> done_ranks;  // ranks that said they finished: silent by right
    bool cancel_requested = false;
    Clock::time_point term_sent;
    bool kill_sent = false;
    // Load the job's rank 0 reports, and the step of the last placement
    // change (published).
    std::optional<placement::LoadTracker> load;
    std::optional<int64_t> last_publish_step;
    // Adopted from an earlier controller: its mpirun is not our child.
    bool adopted = false;
    Clock::time_point adopted_at;
    // The record on disk is behind memory. Persist queues a write (`queued`)
    // that the writer thread makes off the lock; running figures are queued
    // by the monitor loop at most once a second.
    bool unsaved = false;
    bool queued = false;
    uint64_t version = 0;       // bumped by each Persist: a write of an older one leaves `unsaved`
    bool write_failed = false;  // the last write failed (said once, retried every second)
    Clock::time_point saved_at;  // the last write tried
    int64_t log_offset = 0;  // where the current attempt's output starts in the log
    // What the current attempt's ranks reported of their own failures.
    std::vector<moex::v1::RankFailure> failures;
    // Adopted, and not every rank has reported back in yet.
    bool awaiting_readoption = false;
  };

  explicit JobManager(ControllerOptions options, std::unique_ptr<JobStore> store,
                      std::unique_ptr<launcher::Launcher> launcher)
      : options_(std::move(options)), store_(std::move(store)), launcher_(std::move(launcher)),
        cleaner_(std::make_unique<JobCleaner>(*launcher_, options_.moex_binary)) {}

  absl::Status Launch(Entry& entry);
  // Moves a job to a terminal state, kills what is left of its group,
  // persists, and notifies. Requires the lock; returns the notifications.
  void Finish(Entry& entry, moex::v1::JobState state, std::string message, moex::v1::EndReason reason);
  // A rank died, went silent or never started (`lost`: which, when known).
  // Relaunches the job when its spec allows another attempt (on the
  // survivors with allow_shrink), else Finish(FAILED). Requires the lock.
  // `lost_hosts`: whole hosts lost with them (later attempts run without).
  // `reason` is recorded on the attempt (and the job, when it ends); a
  // BAD_INPUT failure is never retried: the same input fails again.
  void RankFailed(Entry& entry, moex::v1::EndReason reason, std::string why, std::vector<int> lost,
                  std::vector<std::string> lost_hosts = {});
  // Requires the lock: the current attempt's record of how it ended (its
  // reason, lost ranks and the ranks' reports), unless it has one already.
  void CloseAttempt(Entry& entry, moex::v1::EndReason reason, const std::string& why, const std::vector<int>& lost);
  // Ends the attempt's processes now: through the launcher (every host),
  // and, on this host only, each registered rank by pid and command line.
  void KillProcesses(Entry& entry);
  // The process group a signal to the entry's job may go to: its recorded
  // one while that still runs the job (JobGroupAlive), else 0 (gone, or a
  // recycled id another program has now). Asked right before signalling.
  static pid_t GroupToSignal(const Entry& entry);
  // Requires the lock: SIGTERM (or SIGKILL) to ranks registered from this
  // host, checked by command line; never a pid of another host.
  void SignalLocalRanks(const Entry& entry, int signal);
  // The request for the job's current attempt (hosts it may use, those lost).
  launcher::LaunchRequest LaunchRequestFor(const moex::v1::Job& job) const;
  // Requires the lock: a rank went silent; its whole host when every rank
  // there is silent (and the launcher spans hosts).
  void SilentRank(Entry& entry, int rank, double silent_seconds);
  // Requires the lock: publishes a placement for `world` ranks of as many
  // slots each as now (replicas given up first); an error says why the
  // experts do not fit.
  absl::Status PublishForWorld(Entry& entry, int world, const std::string& reason);
  // Requires the lock: queues the entry's record for the writer thread
  // (SQLite's fsync is never made under the lock, nor on a gRPC thread).
  void Persist(Entry& entry);
  // Requires the lock: writes the record now, under the lock. Only right
  // after a launch, so that the launch's process group is on disk before a
  // crash could lose it (a restart then finds and adopts the job).
  void PersistNow(Entry& entry);
  // The writer thread: writes the queued records, newest state each, off
  // the lock; on shutdown, until none is queued.
  void WriterLoop();
  // The job's host weight cache directory, "" when it has none.
  std::string WeightCacheDir(const moex::v1::Job& job) const;
  // Queues the cleanup of what the job left on its hosts (launcher/host_cleanup.h):
  // attempt 0: the job ended, everything (segments, weight cache, records);
  // attempt N: that attempt ended and the job relaunches, its segments only.
  // Runs on the cleaner's thread, never under the lock.
  void CleanUpHosts(const moex::v1::Job& job, int attempt);
  // Requires the lock. Makes placement version 1 (contiguous) if the job has
  // none yet.
  absl::Status EnsurePlacement(Entry& entry);
  void RecordLoad(Entry& entry, const moex::v1::ReportStepRequest& request);
  // Requires the lock: the entry of a rank call (`call` names it in errors),
  // or why it is refused: an unknown job, an ended job or attempt, a rank
  // outside the current attempt's world (see RegisterRank).
  absl::StatusOr<Entry*> RankCallEntry(std::string_view call, const std::string& job_id, int rank, int attempt);
  void MaybeRebalance(Entry& entry);
  // Requires the lock: plans from the load window and publishes.
  absl::StatusOr<moex::v1::Placement> Publish(Entry& entry, const std::string& policy, const std::string& reason);
  void Notify(const std::string& id);
  // Requires the lock: drops the oldest ended jobs past max_ended_in_memory
  // (written to the store, watched by nobody) from memory.
  void EvictEnded();
  void MonitorLoop();
  // Removes a deleted job's log and launch files (off the lock).
  void RemoveJobFiles(const moex::v1::Job& job) const;
  // Reaps the launches that ended (only those: a launcher's own commands
  // are reaped by it), asks the engine about each, then OnExit.
  void ReapLaunches();
  void OnExit(pid_t pid, int wait_status, const launcher::EngineReport& engine);
  // Why the attempt ended, from its log and the engine; `lost_host` is set
  // when a whole host was lost (mpirun lost its daemon there, Slurm's node
  // failed, the ranks named every rank of a host).
  // `log_reason`: what the log shows (a rank killed: RANK_LOST; a rank's own
  // error line: RANK_ERROR; mpirun or srun failing: LAUNCHER_ERROR). Read
  // only where the ranks' own reports do not decide (see OnExit).
  std::string DiagnoseFailure(const Entry& entry, int wait_status, const launcher::EngineReport& engine,
                              std::string* lost_host, moex::v1::EndReason* log_reason);

  ControllerOptions options_;
  std::unique_ptr<JobStore> store_;
  StateDirIdentity state_dir_identity_;
  RankKey rank_key_;  // each job's ranks' secret derives from it
  std::unique_ptr<launcher::Launcher> launcher_;  // starts each attempt's ranks
  std::unique_ptr<JobCleaner> cleaner_;           // cleans their hosts after them
  std::mutex mutex_;
  std::map<std::string, Entry> jobs_;
  // Under the lock: ended jobs by state, stored ones included (counted at
  // start, by Finish and by Delete), and the counters of Figures.
  std::map<moex::v1::JobState, int64_t> ended_by_state_;
  Figures counters_;
  std::map<pid_t, std::string> job_by_group_;
  std::set<pid_t> children_;  // launcher processes started here and not reaped yet
  std::string this_host_;     // gethostname(): ranks registered from here may be signalled
  struct Subscription {
    std::string job_id;
    std::function<void(const moex::v1::Job&)> on_change;
  };
  std::map<int64_t, Subscription> subscriptions_;
  int64_t next_subscription_ = 1;
  std::vector<std::string> pending_notifications_;
  bool stopping_ = false;
  std::thread monitor_;
  // Records queued for the writer thread (job ids, each once), and whether
  // it should stop once they are written; `written_` wakes those waiting
  // for a record to reach the disk (DeleteJob).
  std::vector<std::string> dirty_;
  bool writer_stop_ = false;
  std::condition_variable write_wanted_;
  std::condition_variable written_;
  std::thread writer_;
};

}  // namespace moex::cluster
