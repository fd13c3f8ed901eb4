// Open MPI hostfiles: `host [slots=N] [max_slots=M]` a line, `#` comments.
// Read at `moex serve --hostfile F` start (an error names the file and the
// line), and written per attempt with the hosts it may use.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moex::launcher {

struct HostSlots {
  std::string host;
  int slots = 0;  // 0: unsaid (Open MPI counts the host's cores)
};

// A host name a launcher may be given: [A-Za-z0-9][A-Za-z0-9._-]*, at most
// 253 characters.
absl::Status ValidateHostName(std::string_view host);

absl::StatusOr<std::vector<HostSlots>> ParseHostfile(std::string_view text, const std::string& path);
absl::StatusOr<std::vector<HostSlots>> ReadHostfile(const std::string& path);
std::string FormatHostfile(const std::vector<HostSlots>& hosts);
// Writes `hosts` to `path` (0600, replaced atomically).
absl::Status WriteHostfile(const std::string& path, const std::vector<HostSlots>& hosts);

// Whether two names are one host: equal, or one is the other's short name
// ("node01" and "node01.cluster"). Ranks report gethostname(), which may be
// either form of what a hostfile says.
bool SameHost(std::string_view a, std::string_view b);

// The hosts of `all` that `only` (empty: all) keeps and `exclude` does not
// name (SameHost); an error names a host of `only` that `all` lacks.
absl::StatusOr<std::vector<HostSlots>> SelectHosts(const std::vector<HostSlots>& all,
                                                   const std::vector<std::string>& only,
                                                   const std::vector<std::string>& exclude);

}  // namespace moex::launcher
