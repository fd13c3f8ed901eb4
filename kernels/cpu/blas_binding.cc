#include "moex/kernels/blas_binding.h"

#include <cblas.h>
#include <sched.h>

#include "moex/core/str_cat.h"

namespace moex::kernels {

std::string BlasBinding::Warning() const {
  if (!oversubscribed()) return "";
  return StrCat(threads, " BLAS threads (MOEX_BLAS_THREADS) but this process is bound to ", cpus_bound,
                cpus_bound == 1 ? " CPU" : " CPUs", ": the threads share ", cpus_bound == 1 ? "it" : "them",
                "; give them their cores (mpirun --bind-to none, or --map-by slot:PE=", threads, ")");
}

BlasBinding CurrentBlasBinding() {
  BlasBinding b;
  b.threads = openblas_get_num_threads();
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) b.cpus_bound = CPU_COUNT(&set);
  return b;
}

}  // namespace moex::kernels
