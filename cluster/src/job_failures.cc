// How an attempt ended, and what failed in it: the launch's exit and log,
// the engine's word (Slurm's job state), silent ranks and whole hosts lost.
// JobManager's methods, kept apart from the job lifecycle in job_manager.cc.
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/cluster/job_manager.h"
#include "moex/core/str_cat.h"
#include "moex/core/subprocess.h"
#include "moex/launcher/hostfile.h"

namespace moex::cluster {
namespace {

std::vector<int> RanksOn(const moex::v1::Job& job, const std::string& host) {
  std::vector<int> ranks;
  for (const auto& info : job.ranks()) {
    if (info.host() == host) ranks.push_back(info.rank());
  }
  std::sort(ranks.begin(), ranks.end());
  return ranks;
}

std::string RankList(const std::vector<int>& ranks) {
  return StrCat(ranks.size() == 1 ? "rank " : "ranks ", absl::StrJoin(ranks, ", "));
}

// What the ranks' own reports (ReportFailure) say of an attempt's end.
struct ReportedCause {
  bool decided = false;
  moex::v1::EndReason reason = moex::v1::END_REASON_UNSPECIFIED;
  std::vector<int> lost;  // the ranks to blame
  std::string lost_host;  // every rank of it was blamed, and the job had others
  std::string why;
};

// What the reports say, silent ranks first: those the others waited for
// are lost (a host, when they are all of it); else a rank that failed on
// its own is the cause. Undecided when neither: the log decides.
ReportedCause CauseFromReports(const moex::v1::Job& job, const std::vector<moex::v1::RankFailure>& reports) {
  ReportedCause cause;
  // Ranks the others were waiting for and that said nothing of their own:
  // the lost ones. A rank that was itself waiting, or failed unstopped, has
  // spoken; one that only says the launcher stopped it has not (a hung rank
  // ends that way).
  std::set<int> spoke, waited;
  std::vector<int> waiting;
  for (const moex::v1::RankFailure& report : reports) {
    if (!report.stopped() || report.waiting_for_size() > 0) spoke.insert(report.rank());
    if (report.waiting_for_size() > 0) waiting.push_back(report.rank());
    waited.insert(report.waiting_for().begin(), report.waiting_for().end());
  }
  std::vector<int> blamed;
  for (int r : waited) {
    if (!spoke.count(r)) blamed.push_back(r);
  }
  if (!blamed.empty()) {
    cause.decided = true;
    cause.reason = moex::v1::END_REASON_RANK_LOST;
    cause.lost = blamed;
    std::set<std::string> hosts, blamed_hosts;
    for (const auto& info : job.ranks()) hosts.insert(info.host());
    for (int r : blamed) {
      for (const auto& info : job.ranks()) {
        if (info.rank() == r) blamed_hosts.insert(info.host());
      }
    }
    if (hosts.size() > 1 && blamed_hosts.size() == 1 && RanksOn(job, *blamed_hosts.begin()) == blamed) {
      cause.reason = moex::v1::END_REASON_HOST_LOST;
      cause.lost_host = *blamed_hosts.begin();
    }
    std::sort(waiting.begin(), waiting.end());
    cause.why = StrCat(RankList(blamed), " went away without a word while ", RankList(waiting), " waited for ",
                       blamed.size() == 1 ? "it" : "them", " (the ranks' own reports)");
    return cause;
  }
  // Nobody silent was waited for: a rank that failed on its own (not
  // stopped, waiting for nobody, not a peer's failure seen from afar) is
  // the cause; its input first (BAD_INPUT), then memory, then any error.
  auto on_its_own = [](const moex::v1::RankFailure& report) {
    return !report.stopped() && report.waiting_for_size() == 0 && report.reason() != moex::v1::END_REASON_RANK_LOST;
  };
  auto rank_of_cause = [](moex::v1::EndReason reason) {
    return reason == moex::v1::END_REASON_BAD_INPUT ? 0 : reason == moex::v1::END_REASON_OUT_OF_MEMORY ? 1 : 2;
  };
  const moex::v1::RankFailure* own = nullptr;
  for (const moex::v1::RankFailure& report : reports) {
    if (!on_its_own(report)) continue;
    if (own == nullptr || rank_of_cause(report.reason()) < rank_of_cause(own->reason())) own = &report;
  }
  if (own == nullptr) return cause;
  cause.decided = true;
  cause.reason = own->reason();
  if (cause.reason != moex::v1::END_REASON_BAD_INPUT) {
    for (const moex::v1::RankFailure& report : reports) {
      if (on_its_own(report) && report.reason() == cause.reason) cause.lost.push_back(report.rank());
    }
  }
  cause.why = StrCat("rank ", own->rank(), " reported: ", own->message());
  return cause;
}

}  // namespace

std::string JobManager::DiagnoseFailure(const Entry& entry, int wait_status, const launcher::EngineReport& engine,
                                        std::string* lost_host, moex::v1::EndReason* log_reason) {
  // The most specific line of the log wins: a host lost, a rank's own error,
  // then what the launcher saw happen to a rank, then its exit status.
  std::ifstream log(entry.job.log_path());
  log.seekg(static_cast<std::streamoff>(entry.log_offset));  // this attempt's part of the log only
  std::string line, rank_error, rank_death, host_evidence;
  static const std::regex kDeath(R"(process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+) \(([^)]*)\))");
  // mpirun: "Remote daemon: [[1234,0],1] on node h1"; srun: "Node failure on
  // h1"; a rank of moex: "[ranks 2, 3 on host h1 (every rank of it)]".
  static const std::regex kLostDaemon(R"(Remote daemon: *\S+ on node (\S+))");
  static const std::regex kNodeFailure(R"(srun: error: Node failure on (\S+))");
  static const std::regex kWholeHost(R"(on host (\S+) \(every rank of it\))");
  // When a daemon dies with its host's ranks, Open MPI 4.1 may only say
  // that a daemon failed, while the survivors name the host that hung up
  // ("Peer host: h1") or only themselves ("Local host: h0").
  static const std::regex kPeerHost(R"(^ *Peer host: +(\S+))");
  static const std::regex kLocalHost(R"(^ *Local host: +(\S+))");
  // srun: "srun: error: h1: task 2: Segmentation fault", "…: tasks 2-3: Killed".
  static const std::regex kTaskDeath(R"(^srun: error: (\S+): tasks? ([\d,-]+): (.+)$)");
  static const std::regex kRankError(R"(^moex run: rank (\d+): error: )");
  // Ranks heard from at the end (their own error line, or srun saying how
  // they ended), and whether any ended otherwise than by exiting.
  std::set<int> heard;
  bool task_deaths = false, only_exits = true, peer_lost = false;
  // The launcher's own failure: it could not allocate, place or start.
  static const std::regex kLauncherError(
      R"(^(srun: (error|fatal): .*|There are not enough slots available.*|mpirun was unable to .*|mpirun could not .*|mpirun does not .*))");
  std::string launcher_error;
  std::set<std::string> peer_hosts, local_hosts;
  std::string whole_host_named;  // by a moex rank: "[ranks 2, 3 on host h1 (every rank of it)]"
  bool daemon_failed = false;
  std::smatch match;
  while (std::getline(log, line)) {
    if (line.find("ORTE was unable to reliably start one or more daemons") != std::string::npos ||
        line.find("ORTE has lost communication with a remote daemon") != std::string::npos ||
        line.find("An ORTE daemon has unexpectedly failed") != std::string::npos) {
      daemon_failed = true;
    }
    if (std::regex_search(line, match, kPeerHost)) peer_hosts.insert(match[1].str());
    if (std::regex_search(line, match, kLocalHost)) local_hosts.insert(match[1].str());
    if (host_evidence.empty()) {
      if (std::regex_search(line, match, kLostDaemon)) {
        *lost_host = match[1].str();
        host_evidence = StrCat("mpirun lost its daemon on ", *lost_host);
      } else if (std::regex_search(line, match, kNodeFailure)) {
        *lost_host = match[1].str();
        host_evidence = StrCat("Slurm reported a node failure on ", *lost_host);
      }
    }
    if (rank_error.empty() && line.find("moex run: rank ") == 0 && line.find(": error: ") != std::string::npos) {
      rank_error = line.substr(std::string("moex run: ").size());
      if (std::regex_search(line, match, kWholeHost)) whole_host_named = match[1].str();
    }
    if (std::regex_search(line, match, kRankError)) {
      heard.insert(std::atoi(match[1].str().c_str()));
      // A rank that failed because a peer went away, not on its own.
      for (const char* sign : {"timed out", "waiting for rank", "Broken pipe", "Connection reset", "hung up", "lost"}) {
        if (line.find(sign) != std::string::npos) peer_lost = true;
      }
    }
    if (std::regex_search(line, match, kTaskDeath)) {
      task_deaths = true;
      // SIGPIPE ("Broken pipe") is a peer hanging up, not a rank's own end.
      const std::string how = match[3].str();
      if (how.rfind("Broken pipe", 0) == 0) peer_lost = true;
      if (how.rfind("Exited with exit code", 0) != 0 && how.rfind("Broken pipe", 0) != 0) only_exits = false;
      for (const std::string& range : std::vector<std::string>(absl::StrSplit(match[2].str(), ','))) {
        const size_t dash = range.find('-');
        const int first = std::atoi(range.substr(0, dash).c_str());
        const int last = dash == std::string::npos ? first : std::atoi(range.substr(dash + 1).c_str());
        for (int r = first; r <= last && r - first < 4096; ++r) heard.insert(r);
      }
    }
    if (rank_death.empty() && std::regex_search(line, match, kTaskDeath)) {
      const std::string tasks = match[2].str();
      rank_death = StrCat("rank ", tasks.substr(0, tasks.find_first_of(",-")), " (on ", match[1].str(), ") ended: ",
                          match[3].str());
    } else if (launcher_error.empty() && std::regex_search(line, match, kLauncherError)) {
      launcher_error = line;
    }
    if (rank_death.empty() && std::regex_search(line, match, kDeath)) {
      // mpirun may print pid 0; the rank told us its pid when it registered.
      std::string pid = match[2].str(), host = match[3].str();
      for (const auto& info : entry.job.ranks()) {
        if (std::to_string(info.rank()) == match[1].str()) {
          pid = std::to_string(info.pid());
          host = info.host();
        }
      }
      rank_death = StrCat("rank ", match[1].str(), " (pid ", pid, " on ", host, ") was killed by signal ",
                          match[4].str(), " (", match[5].str(), ")");
    }
  }
  // A rank that died on its own (its daemon lived to say so) is no host lost,
  // even when the survivors were waiting for every rank of its host.
  if (host_evidence.empty() && rank_death.empty() && !whole_host_named.empty()) {
    *lost_host = whole_host_named;
    host_evidence = StrCat("the surviving ranks lost every rank of ", whole_host_named);
  }
  // srun: the ranks that failed exited (each saying why) or died of a peer
  // hanging up (SIGPIPE),
  // while every rank of one host was never heard from, neither by its own
  // line nor by srun (whose daemon there went with it): that host is lost.
  // (When srun ends the others, it says so: "tasks 2-3: Killed".)
  // Ranks of a host that finished cleanly are not heard from either: the
  // others must have failed for want of a peer.
  if (host_evidence.empty() && task_deaths && only_exits && peer_lost && entry.job.ranks_size() > 0) {
    std::map<std::string, std::pair<int, int>> per_host;  // ranks, ranks unheard
    for (const auto& info : entry.job.ranks()) {
      ++per_host[info.host()].first;
      if (!heard.count(info.rank())) ++per_host[info.host()].second;
    }
    std::vector<std::string> silent_hosts;
    int unheard_elsewhere = 0;
    for (const auto& [host, counts] : per_host) {
      if (counts.second == counts.first) {
        silent_hosts.push_back(host);
      } else {
        unheard_elsewhere += counts.second;
      }
    }
    if (silent_hosts.size() == 1 && per_host.size() > 1 && unheard_elsewhere == 0) {
      *lost_host = silent_hosts[0];
      host_evidence = StrCat("no rank of ", *lost_host, " was heard from at the end (no error line, nothing from srun) "
                             "while every other rank failed");
      rank_death.clear();
    }
  }
  if (host_evidence.empty() && daemon_failed && entry.job.ranks_registered() > 0) {
    // Its daemon died with the ranks: the one host the survivors name as
    // their peer, else the one host of the job none of them speaks from.
    std::set<std::string> candidates = peer_hosts;
    if (candidates.empty()) {
      for (const auto& info : entry.job.ranks()) {
        if (!local_hosts.count(info.host())) candidates.insert(info.host());
      }
      if (local_hosts.empty()) candidates.clear();
    }
    if (candidates.size() == 1) {
      *lost_host = *candidates.begin();
      host_evidence = StrCat("mpirun's daemon on ", *lost_host, " failed with the ranks there");
    }
  }
  // A name read from a log reaches the next launch's argv: host names only.
  if (!lost_host->empty() && !launcher::ValidateHostName(*lost_host).ok()) {
    lost_host->clear();
    host_evidence.clear();
  }
  const std::string launcher_name = launcher_->name().substr(0, launcher_->name().find(' '));
  std::string exit = StrCat(launcher_name == "slurm" ? "srun" : "mpirun", " ", DescribeWaitStatus(wait_status));
  const std::string engine_said = engine.Summary("Slurm");
  if (!engine_said.empty()) exit = StrCat(exit, "; ", engine_said);
  *log_reason = !rank_death.empty()      ? moex::v1::END_REASON_RANK_LOST
                : !rank_error.empty()    ? moex::v1::END_REASON_RANK_ERROR
                : !launcher_error.empty() ? moex::v1::END_REASON_LAUNCHER_ERROR
                : entry.job.ranks_registered() > 0 ? moex::v1::END_REASON_RANK_LOST
                                                   : moex::v1::END_REASON_LAUNCHER_ERROR;
  std::vector<std::string> parts;
  if (engine.EngineFailure()) parts.push_back(engine_said);
  if (!host_evidence.empty()) parts.push_back(host_evidence);
  if (!rank_death.empty()) parts.push_back(rank_death);
  if (rank_death.empty() && !rank_error.empty()) parts.push_back(rank_error);
  if (!launcher_error.empty()) parts.push_back(launcher_error);
  parts.push_back(exit);
  parts.push_back(StrCat("log: ", entry.job.log_path()));
  return absl::StrJoin(parts, "; ");
}

void JobManager::ReapLaunches() {
  std::vector<pid_t> children;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    children.assign(children_.begin(), children_.end());
  }
  for (pid_t pid : children) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) != pid) continue;
    std::string job_id;
    int attempt = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      children_.erase(pid);
      auto found = job_by_group_.find(pid);
      if (found != job_by_group_.end() && jobs_.count(found->second)) {
        job_id = found->second;
        attempt = CurrentAttemptNumber(jobs_[job_id].job);
      }
    }
    // The engine's word (a Slurm query): asked without the lock.
    const launcher::EngineReport engine = job_id.empty() ? launcher::EngineReport{} : launcher_->Report(job_id, attempt);
    OnExit(pid, status, engine);
  }
}

void JobManager::OnExit(pid_t pid, int wait_status, const launcher::EngineReport& engine) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = job_by_group_.find(pid);
  if (found == job_by_group_.end()) return;
  auto job = jobs_.find(found->second);
  job_by_group_.erase(found);
  if (job == jobs_.end()) return;
  Entry& entry = job->second;
  entry.process_group = 0;  // reaped: its id may be anyone's from now on
  if (entry.job.attempts_size() > 0) {
    moex::v1::Attempt* attempt = entry.job.mutable_attempts(entry.job.attempts_size() - 1);
    if (!engine.job_id.empty()) attempt->set_launcher_job_id(engine.job_id);
    if (WIFEXITED(wait_status)) attempt->set_launcher_exit_code(WEXITSTATUS(wait_status));
    if (WIFSIGNALED(wait_status)) attempt->set_launcher_signal(WTERMSIG(wait_status));
  }
  if (IsTerminal(entry.job.state())) {  // ended already (silence, a cancel): only the launcher's end is news
    Persist(entry);
    return;
  }
  if (entry.cancel_requested) {
    Finish(entry, moex::v1::JOB_STATE_CANCELLED, "cancelled by request; every process of the job has ended",
           moex::v1::END_REASON_CANCELLED);
    return;
  }
  if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0 && entry.job.ranks_registered() == World(entry.job)) {
    Finish(entry, moex::v1::JOB_STATE_SUCCEEDED, "succeeded", moex::v1::END_REASON_SUCCEEDED);
    return;
  }
  // The log and the engine give the words; the ranks' own reports, where
  // they say enough, decide the cause and whom to blame.
  const bool spans_hosts = !launcher_->RanksAreLocal();
  std::string lost_host;
  moex::v1::EndReason log_reason = moex::v1::END_REASON_UNSPECIFIED;
  std::string why = DiagnoseFailure(entry, wait_status, engine, &lost_host, &log_reason);
  const ReportedCause reported = CauseFromReports(entry.job, entry.failures);
  if (lost_host.empty() && !engine.EngineFailure() && !reported.lost_host.empty()) {
    lost_host = reported.lost_host;
    why = StrCat(reported.why, "; ", why);
  }
  std::vector<int> lost = RanksOn(entry.job, lost_host);
  if (!lost_host.empty() && !lost.empty()) {
    // A whole host: its ranks are lost, and later attempts run without it
    // where the launcher chooses among hosts.
    RankFailed(entry, moex::v1::END_REASON_HOST_LOST,
               StrCat("host ", lost_host, " was lost (", RankList(lost), ", every rank on it): ", why), lost,
               spans_hosts ? std::vector<std::string>{lost_host} : std::vector<std::string>{});
    return;
  }
  if (engine.EngineFailure()) {
    // The engine ended it (time limit, preemption, a node): every rank
    // was stopped alike, none is to blame.
    RankFailed(entry, moex::v1::END_REASON_ENGINE, std::move(why), {});
    return;
  }
  if (reported.decided) {
    RankFailed(entry, reported.reason, StrCat(reported.why, "; ", why), reported.lost);
    return;
  }
  // No rank could say (killed at once, or the launch failed): the log's
  // "rank N (pid ...) was killed", "rank N: error ...", the rank it names.
  lost.clear();
  static const std::regex kRank(R"((^|; )rank (\d+)\b)");
  std::smatch match;
  int lost_rank = 0;
  if (std::regex_search(why, match, kRank) && absl::SimpleAtoi(match[2].str(), &lost_rank)) lost.push_back(lost_rank);
  RankFailed(entry, log_reason, std::move(why), std::move(lost));
}

void JobManager::SilentRank(Entry& entry, int rank, double silent_seconds) {
  const auto now = Clock::now();
  std::string host, where;
  for (const auto& info : entry.job.ranks()) {
    if (info.rank() == rank) {
      host = info.host();
      where = StrCat(" (pid ", info.pid(), " on ", info.host(), ")");
    }
  }
  const std::string timeout = StrCat(" s (timeout ", options_.heartbeat_timeout_seconds, " s)");
  auto silent_for = [&](int r) {
    auto last = entry.last_heartbeat.find(r);
    return last == entry.last_heartbeat.end() ? silent_seconds
                                              : std::chrono::duration<double>(now - last->second).count();
  };
  auto silent = [&](int r) { return !entry.done_ranks.count(r) && silent_for(r) > options_.heartbeat_timeout_seconds / 2; };
  // Every rank silent: nothing tells one host from another (the controller
  // unreachable from all of them, or the whole job stalled): no host blamed.
  bool any_heard = false;
  for (const auto& info : entry.job.ranks()) any_heard = any_heard || !silent(info.rank());
  if (!any_heard) {
    RankFailed(entry, moex::v1::END_REASON_RANK_HUNG,
               StrCat("every rank of the job is silent: none sent a heartbeat for over ",
                      options_.heartbeat_timeout_seconds / 2, " s (rank ", rank, where, " for ",
                      static_cast<int>(silent_seconds), timeout,
                      "; the controller unreachable from their hosts, or the whole job stalled)"),
               {});
    return;
  }
  // Every rank of its host silent while ranks elsewhere are heard: the host
  // is lost, not one rank. A host of one rank cannot be told from a hung
  // rank: that rank is named, its host kept.
  std::vector<int> on_host = RanksOn(entry.job, host);
  bool all_silent = on_host.size() > 1;
  for (int r : on_host) all_silent = all_silent && silent(r);
  if (all_silent && launcher::ValidateHostName(host).ok()) {
    const bool spans_hosts = !launcher_->RanksAreLocal();
    RankFailed(entry, moex::v1::END_REASON_HOST_LOST,
               StrCat("host ", host, " was lost: ", RankList(on_host), " (every rank on it) sent no heartbeat for ",
                      static_cast<int>(silent_seconds), timeout),
               on_host, spans_hosts ? std::vector<std::string>{host} : std::vector<std::string>{});
    return;
  }
  RankFailed(entry, moex::v1::END_REASON_RANK_HUNG,
             StrCat("rank ", rank, where, " stopped sending heartbeats: none for ", static_cast<int>(silent_seconds),
                    timeout),
             {rank});
}

}  // namespace moex::cluster
