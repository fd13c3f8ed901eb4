// A rank asked to stop (SIGTERM: what mpirun, orted, Slurm and a controller's
// cancel send before SIGKILL) while it waits for peers says what it was
// waiting for, instead of dying silently.
//
// The stop is for the whole process and for good: once asked, every later
// wait that does not finish at once ends too (a process that is stopping
// reports and exits). So a test installs the handler only in a child
// process of its own.
//
// InstallStopHandler() makes SIGTERM set a flag that every blocking wait
// (the transport's) checks: a wait that is in progress ends at once with an
// error naming the ranks it waited for. A SIGTERM that arrives while no wait
// is in progress ends the process as SIGTERM always did.
#pragma once

namespace moex {

// Once per process, before any wait; safe to call again.
void InstallStopHandler();

// The signal that asked this process to stop (SIGTERM), or 0.
int StopSignal();

// The wait acted on the stop (it ends with an error that says so): the
// process goes on to report it and exit, rather than end at the wait's end.
void AcknowledgeStop();

// Marks a blocking wait in progress for its lifetime: a stop signal then
// ends the wait (StopSignal() != 0) rather than the process.
class WaitInProgress {
 public:
  WaitInProgress();
  ~WaitInProgress();
  WaitInProgress(const WaitInProgress&) = delete;
  WaitInProgress& operator=(const WaitInProgress&) = delete;
};

}  // namespace moex
