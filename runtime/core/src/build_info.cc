#include "moex/core/build_info.h"

#include "absl/strings/str_format.h"

namespace moex {

std::string BuildDescription() {
  auto yes_no = [](bool present) { return present ? "yes" : "no"; };
  return absl::StrFormat("moex %s (rev %s) mpi:%s ucx:%s cuda:%s nccl:%s", build::kVersion,
                         build::kGitRevision, yes_no(build::kHasMpi), yes_no(build::kHasUcx),
                         yes_no(build::kHasCuda), yes_no(build::kHasNccl));
}

}  // namespace moex
