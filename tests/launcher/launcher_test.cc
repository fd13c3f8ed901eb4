// The launchers build the commands their engines run: a hostfile read and
// narrowed per attempt (hosts asked for, hosts lost), ranks per host, the
// environment exported to remote ranks, the cleanup step on each host; and
// for Slurm, srun's allocation options, the engine's report and a partition
// that does not exist. Engines are stood in for by small scripts on PATH
// (the real mpirun and Slurm run in the `cluster` label's tests).
#include "moex/launcher/launcher.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/launcher/hostfile.h"

namespace moex::launcher {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

LauncherOptions Options(const std::string& kind) {
  LauncherOptions options;
  options.kind = kind;
  return options;
}

TEST(HostfileTest, ReadsOpenMpiSyntax) {
  auto hosts = ParseHostfile("# the cluster\nh0 slots=2\n\n h1   slots=3 max_slots=4  # big one\nh2\n", "f");
  ASSERT_TRUE(hosts.ok()) << hosts.status();
  ASSERT_EQ(hosts->size(), 3u);
  EXPECT_EQ((*hosts)[1].host, "h1");
  EXPECT_EQ((*hosts)[1].slots, 3);
  EXPECT_EQ((*hosts)[2].slots, 0);
  EXPECT_EQ(FormatHostfile(*hosts), "h0 slots=2\nh1 slots=3\nh2\n");
}

TEST(HostfileTest, EveryBadLineIsNamed) {
  auto error = [](const std::string& text) { return std::string(ParseHostfile(text, "hf").status().message()); };
  EXPECT_THAT(error("h0 slots=2\nh1 cpus=4\n"), HasSubstr("hostfile hf line 2: unknown field 'cpus'"));
  EXPECT_THAT(error("h0 slots=zero\n"), HasSubstr("line 1: 'slots=zero' is not slots=N"));
  EXPECT_THAT(error("h0 slots=0\n"), HasSubstr("line 1: 'slots=0'"));
  EXPECT_THAT(error("h0\nh0\n"), HasSubstr("line 2: host 'h0' is listed twice"));
  EXPECT_THAT(error("$(reboot) slots=1\n"), HasSubstr("'$(reboot)' is not a host name"));
  EXPECT_THAT(error("# nothing\n"), HasSubstr("names no host"));
  EXPECT_THAT(std::string(ReadHostfile("/nonexistent/hf").status().message()), HasSubstr("cannot read the hostfile"));
}

TEST(HostfileTest, ShortAndLongNamesAreOneHost) {
  EXPECT_TRUE(SameHost("node01", "node01.cluster"));
  EXPECT_TRUE(SameHost("node01.cluster", "node01"));
  EXPECT_FALSE(SameHost("node01.a", "node01.b"));
  EXPECT_FALSE(SameHost("node0", "node01"));
  auto kept = SelectHosts({{"node01.cluster", 2}, {"node02.cluster", 2}}, {}, {"node02"});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(FormatHostfile(*kept), "node01.cluster slots=2\n");
}

TEST(HostfileTest, SelectKeepsAskedAndDropsLost) {
  std::vector<HostSlots> all = {{"h0", 2}, {"h1", 2}, {"h2", 2}};
  auto kept = SelectHosts(all, {}, {"h1"});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(FormatHostfile(*kept), "h0 slots=2\nh2 slots=2\n");
  kept = SelectHosts(all, {"h2", "h1"}, {"h1"});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(FormatHostfile(*kept), "h2 slots=2\n");
  EXPECT_THAT(std::string(SelectHosts(all, {"h9"}, {}).status().message()),
              HasSubstr("host 'h9' is not in the hostfile (it has h0, h1, h2)"));
}

TEST(LauncherTest, SplitArgsTakesWordsAndNothingElse) {
  auto words = SplitArgs("--mca  btl_tcp_if_include 10.1.0.0/24\t--bind-to none", "--mpirun-args");
  ASSERT_TRUE(words.ok());
  EXPECT_THAT(*words, ElementsAre("--mca", "btl_tcp_if_include", "10.1.0.0/24", "--bind-to", "none"));
  EXPECT_THAT(std::string(SplitArgs("a \x01" "b", "--srun-args").status().message()),
              HasSubstr("--srun-args: '\x01" "b' has a control character"));
  EXPECT_THAT(std::string(MakeLauncher(Options("k8s")).status().message()),
              HasSubstr("--launcher 'k8s' is not known (known: mpirun, slurm)"));
}

// Stand-in engines: scripts on a PATH of their own.
class FakeEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char made[] = "/tmp/moex-launcher-test-XXXXXX";
    ASSERT_NE(mkdtemp(made), nullptr);
    root_ = made;
    fs::create_directories(root_ + "/bin");
    old_path_ = std::getenv("PATH");
    setenv("PATH", (root_ + "/bin:" + old_path_).c_str(), 1);
  }
  void TearDown() override {
    setenv("PATH", old_path_.c_str(), 1);
    fs::remove_all(root_);
  }
  void Script(const std::string& name, const std::string& body) const {
    const std::string path = root_ + "/bin/" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body;
    chmod(path.c_str(), 0755);
  }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  // Launches and waits for the stand-in; returns what it logged.
  std::string LaunchAndLog(const Launcher& launcher, LaunchRequest request) const {
    request.log_path = root_ + "/job.log";
    fs::remove(request.log_path);
    absl::StatusOr<Launched> launched = launcher.Launch(request);
    EXPECT_TRUE(launched.ok()) << launched.status();
    if (!launched.ok()) return "";
    int status = 0;
    waitpid(launched->process_group, &status, 0);
    return Read(request.log_path);
  }
  LaunchRequest Request() const {
    LaunchRequest request;
    request.job_id = "j-0123456789ab";
    request.attempt = 2;
    request.world_size = 4;
    request.rank_argv = {"moex", "worker", "--job-id", "j-0123456789ab"};
    request.extra_env = {"MOEX_TOKEN=secret"};
    return request;
  }
  std::string root_, old_path_;
};

TEST_F(FakeEngineTest, MpirunOverAHostfile) {
  // The stand-in prints its argv and the hostfile it was given.
  Script("fake-mpirun", "echo \"$@\"\nwhile [ $# -gt 0 ]; do [ \"$1\" = --hostfile ] && cat \"$2\"; shift; done\n");
  std::ofstream(root_ + "/hosts") << "h0 slots=2\nh1 slots=2\nh2 slots=2\n";
  LauncherOptions options = Options("mpirun");
  options.mpirun = "fake-mpirun";
  options.hostfile = root_ + "/hosts";
  options.work_dir = root_ + "/launch";
  auto launcher = MakeLauncher(options);
  ASSERT_TRUE(launcher.ok());
  ASSERT_TRUE((*launcher)->CheckReady().ok());
  EXPECT_FALSE((*launcher)->RanksAreLocal());
  LaunchRequest request = Request();
  request.exclude_hosts = {"h1"};
  request.ranks_per_host = 2;
  const std::string log = LaunchAndLog(**launcher, request);
  EXPECT_THAT(log, HasSubstr("-np 4 --oversubscribe --mca btl self,vader,tcp --hostfile " + root_ +
                             "/launch/moex-j-0123456789ab-a2.hostfile --map-by ppr:2:node -x MOEX_TOKEN moex worker"));
  EXPECT_THAT(log, HasSubstr("h0 slots=2\nh2 slots=2\n"));  // h1 was lost
  EXPECT_THAT(log, Not(HasSubstr("secret")));               // exported by name, never on a command line

  request.ranks_per_host = 1;
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()),
              HasSubstr("spec.ranks_per_host 1 on 2 host(s) holds fewer than world_size 4 ranks"));
  request.hosts = {"h7"};
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()), HasSubstr("spec.hosts: host 'h7' is not in the hostfile"));
  request.hosts = {"h1"};
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()), HasSubstr("no host is left to run on (excluded: h1)"));
}

TEST_F(FakeEngineTest, MpirunCleansEachHostOfTheJobButTheLostOnes) {
  // One "moex worker --cleanup: <host>: …" line per host of the hostfile it runs on.
  Script("fake-mpirun",
         "while [ $# -gt 0 ]; do [ \"$1\" = --hostfile ] && f=\"$2\"; shift; done\n"
         "while read -r h rest; do echo \"moex worker --cleanup: $h: job j-1: removed 0 shared-memory segments\"; "
         "done < \"$f\"\n");
  std::ofstream(root_ + "/hosts") << "h0 slots=2\nh1 slots=2\nh2 slots=2\n";
  LauncherOptions options = Options("mpirun");
  options.mpirun = "fake-mpirun";
  options.hostfile = root_ + "/hosts";
  options.work_dir = root_;
  auto launcher = MakeLauncher(options);
  ASSERT_TRUE(launcher.ok() && (*launcher)->CheckReady().ok());
  HostCleanupRequest cleanup;
  cleanup.job_id = "j-1";
  auto lines = (*launcher)->CleanUpHosts(cleanup, "moex", {}, {"h1"});
  ASSERT_TRUE(lines.ok()) << lines.status();
  EXPECT_THAT(*lines, ElementsAre("h0: job j-1: removed 0 shared-memory segments",
                                  "h2: job j-1: removed 0 shared-memory segments"));
  lines = (*launcher)->CleanUpHosts(cleanup, "moex", {"h2"}, {});
  ASSERT_TRUE(lines.ok());
  EXPECT_THAT(*lines, ElementsAre("h2: job j-1: removed 0 shared-memory segments"));
  // A rank's host name the hostfile does not know: every host, said so.
  lines = (*launcher)->CleanUpHosts(cleanup, "moex", {"h2", "10.0.0.7"}, {"h1"});
  ASSERT_TRUE(lines.ok());
  EXPECT_THAT(*lines, ElementsAre(HasSubstr("10.0.0.7: not a host of the hostfile"),
                                  "h0: job j-1: removed 0 shared-memory segments",
                                  "h2: job j-1: removed 0 shared-memory segments"));
  Script("fake-mpirun", "echo 'ssh: connect to host h2: No route to host' >&2; exit 255\n");
  EXPECT_THAT(std::string((*launcher)->CleanUpHosts(cleanup, "moex", {"h2"}, {}).status().message()),
              HasSubstr("the cleanup step on h2 exited with code 255: ssh: connect to host h2: No route to host"));
}

TEST_F(FakeEngineTest, MpirunWithoutAHostfileKeepsRanksHere) {
  LauncherOptions options = Options("mpirun");
  options.mpirun = "true";
  auto launcher = MakeLauncher(options);
  ASSERT_TRUE(launcher.ok() && (*launcher)->CheckReady().ok());
  EXPECT_TRUE((*launcher)->RanksAreLocal());
  LaunchRequest request = Request();
  request.hosts = {"h0"};
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()), HasSubstr("hosts cannot be chosen"));
  EXPECT_THAT(std::string(MakeLauncher([] {
                                            LauncherOptions o = Options("mpirun");
                                            o.mpirun = "no-such-mpirun";
                                            return o;
                                          }()).value()->CheckReady().message()),
              HasSubstr("'no-such-mpirun' is not on PATH"));
}

TEST_F(FakeEngineTest, SlurmAllocatesThroughSrunAndReportsTheJobState) {
  Script("srun", "echo srun \"$@\"\n");
  Script("scancel", "echo scancel \"$@\" >> " + root_ + "/scancel.log\n");
  Script("sinfo", "case \"$*\" in *-N*) printf 'h0\\nh1\\nh1\\n' ;; *) printf 'vc\\nsmall\\n' ;; esac\n");
  Script("squeue", "case \"$*\" in *%j*) printf 'other|h9\\nmoex-j-0123456789ab-a1|h[0-1]\\nmoex-j-0123456789ab-a2|(null)\\n' ;;"
                   " *) echo '41|RUNNING|None|h[0-1]'; echo '42|NODE_FAIL|None|h[0-1]' ;; esac\n");
  Script("scontrol", "[ \"$3\" = 'h[0-1]' ] && printf 'h0\\nh1\\n'\n");
  LauncherOptions options = Options("slurm");
  options.slurm_partition = "gpu";
  EXPECT_THAT(std::string(MakeLauncher(options).value()->CheckReady().message()),
              HasSubstr("--slurm-partition 'gpu' is not a partition of this Slurm cluster (it has vc, small)"));
  options.slurm_partition = "vc";
  options.slurm_account = "ml";
  options.slurm_time_limit = "30";
  options.srun_args = {"--exclusive"};
  auto launcher = MakeLauncher(options);
  ASSERT_TRUE(launcher.ok() && (*launcher)->CheckReady().ok());
  EXPECT_FALSE((*launcher)->RanksAreLocal());
  LaunchRequest request = Request();
  request.ranks_per_host = 2;
  request.exclude_hosts = {"h2"};
  EXPECT_THAT(LaunchAndLog(**launcher, request),
              HasSubstr("srun --mpi=pmix --job-name=moex-j-0123456789ab-a2 --ntasks=4 --kill-on-bad-exit=1 "
                        "--partition=vc --account=ml --time=30 --ntasks-per-node=2 --nodes=2 --exclude=h2 --exclusive "
                        "moex worker --job-id j-0123456789ab"));
  request.hosts = {"h5"};
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()),
              HasSubstr("spec.ranks_per_host 2 on 1 host(s) holds fewer than world_size 4 ranks"));
  request.hosts = {"h0", "h5"};
  EXPECT_THAT(std::string((*launcher)->CheckRequest(request).message()),
              HasSubstr("spec.hosts: 'h5' is not a node of partition vc (it has h0, h1, h1)"));
  const EngineReport report = (*launcher)->Report("j-0123456789ab", 2);
  EXPECT_EQ(report.job_id, "42");
  EXPECT_TRUE(report.EngineFailure());
  EXPECT_EQ(report.Summary("Slurm"), "Slurm job 42: NODE_FAIL, on h[0-1]");
  request.hosts = {"h1", "h2"};
  EXPECT_THAT(LaunchAndLog(**launcher, request), HasSubstr("--ntasks-per-node=2 --nodes=1 --nodelist=h1 --exclude=h2"));
  request.hosts = {"h2"};
  EXPECT_THAT(std::string((*launcher)->Launch(request).status().message()),
              HasSubstr("no host is left to run on: spec.hosts (h2) were all lost"));
  request.hosts.clear();
  request.device = "cuda";
  EXPECT_THAT(LaunchAndLog(**launcher, request), HasSubstr("--gpus-per-task=1"));
  // The cleanup runs on the nodes Slurm gave the job's attempts, found by
  // name: attempt 1's; attempt 2 never got one.
  Script("srun", "for a in \"$@\"; do case \"$a\" in --nodelist=*) echo \"moex worker --cleanup: ${a#--nodelist=}: ok\" ;; esac; done\n");
  HostCleanupRequest cleanup;
  cleanup.job_id = "j-0123456789ab";
  auto lines = (*launcher)->CleanUpHosts(cleanup, "moex", {}, {"h1"});
  ASSERT_TRUE(lines.ok()) << lines.status();
  EXPECT_THAT(*lines, ElementsAre("h0: ok"));
  cleanup.attempt = 2;
  lines = (*launcher)->CleanUpHosts(cleanup, "moex", {}, {});
  ASSERT_TRUE(lines.ok()) << lines.status();
  EXPECT_THAT(*lines, ElementsAre("(no node): Slurm allocated none to it, nothing to clean"));
  (*launcher)->Stop("j-0123456789ab", 2, 0, /*force=*/false);
  launcher->reset();  // reaps scancel
  EXPECT_THAT(Read(root_ + "/scancel.log"), HasSubstr("--name=moex-j-0123456789ab-a2 --user=" + std::to_string(getuid()) +
                                                      " --signal=TERM"));
}

}  // namespace
}  // namespace moex::launcher
