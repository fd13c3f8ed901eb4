// Ranks authenticate as ranks of *their* job: each job's ranks are handed a
// secret at launch (MOEX_RANK_SECRET, exported by name like the token) and
// send it on every rank call (metadata "moex-rank-secret"). A client that
// holds the API token but not the job's secret cannot speak for its ranks.
//
// The secret is HMAC-SHA256(key, job id), the key 32 random bytes kept in
// <state dir>/rank.key (0600, made at the first start): nothing per job is
// stored, and a restarted controller still knows the secrets of the jobs
// it adopts.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace moex::cluster {

inline constexpr char kRankSecretMetadata[] = "moex-rank-secret";
inline constexpr char kRankSecretEnv[] = "MOEX_RANK_SECRET";

class RankKey {
 public:
  // Reads <state_dir>/rank.key, or makes it (0600) when there is none; a
  // key file that is not 32 bytes, or that others may read, is refused.
  static absl::StatusOr<RankKey> LoadOrCreate(const std::string& state_dir);

  // 64 hex digits.
  std::string SecretFor(std::string_view job_id) const;
  // Constant-time comparison with SecretFor(job_id).
  bool Check(std::string_view job_id, std::string_view presented) const;

 private:
  std::string key_;
};

}  // namespace moex::cluster
