// How many threads the BLAS of this process runs, against how many CPUs
// the process may run on. An MPI launcher binds each rank to a core by
// default (Open MPI: to one core when there are two ranks or fewer), so
// `MOEX_BLAS_THREADS=16 mpirun -np 1` runs sixteen threads on one core
// unless the binding gives them the cores (`--bind-to none`,
// `--map-by slot:PE=16`).
#pragma once

#include <string>

namespace moex::kernels {

struct BlasBinding {
  int threads = 1;     // the BLAS's threads (openblas_get_num_threads)
  int cpus_bound = 0;  // CPUs in this process's affinity mask (sched_getaffinity); 0: unknown

  // More BLAS threads than CPUs to run them.
  bool oversubscribed() const { return cpus_bound > 0 && threads > cpus_bound; }
  // "" unless oversubscribed; else one sentence naming both counts and the
  // mpirun flags that give the threads their cores.
  std::string Warning() const;
};

// This process's, now (after SetBlasThreads).
BlasBinding CurrentBlasBinding();

}  // namespace moex::kernels
