#include "moex/cluster/rank_secret.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "moex/core/str_cat.h"

namespace moex::cluster {
namespace {

constexpr size_t kKeyBytes = 32;

}  // namespace

absl::StatusOr<RankKey> RankKey::LoadOrCreate(const std::string& state_dir) {
  const std::string path = (std::filesystem::path(state_dir) / "rank.key").string();
  RankKey key;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    unsigned char bytes[kKeyBytes];
    if (RAND_bytes(bytes, sizeof(bytes)) != 1) return absl::InternalError("cannot draw a rank key (RAND_bytes)");
    const std::string temporary = path + ".new";
    const int out = open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0) return absl::PermissionDeniedError(StrCat("cannot create ", temporary, ": ", std::strerror(errno)));
    const bool written = write(out, bytes, sizeof(bytes)) == static_cast<ssize_t>(sizeof(bytes)) && fsync(out) == 0;
    close(out);
    // link(2) fails when another start made the key first: then that one is read.
    if (!written || (link(temporary.c_str(), path.c_str()) != 0 && errno != EEXIST)) {
      unlink(temporary.c_str());
      return absl::InternalError(StrCat("cannot write the rank key ", path, ": ", std::strerror(errno)));
    }
    unlink(temporary.c_str());
    fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  }
  if (fd < 0) return absl::PermissionDeniedError(StrCat("cannot read the rank key ", path, ": ", std::strerror(errno)));
  struct stat info {};
  char buffer[kKeyBytes + 1];
  const ssize_t n = fstat(fd, &info) == 0 ? read(fd, buffer, sizeof(buffer)) : -1;
  close(fd);
  if (n != static_cast<ssize_t>(kKeyBytes)) {
    return absl::DataLossError(StrCat("the rank key ", path, " is not ", kKeyBytes, " bytes; remove it to make a new one "
                                      "(running jobs' ranks will then be refused)"));
  }
  if ((info.st_mode & 077) != 0 || info.st_uid != geteuid()) {
    return absl::PermissionDeniedError(StrCat("the rank key ", path, " is not this user's alone (mode 0",
                                              (info.st_mode >> 6) & 7, (info.st_mode >> 3) & 7, info.st_mode & 7,
                                              "): chmod 600 it, as the controller's user"));
  }
  key.key_.assign(buffer, kKeyBytes);
  return key;
}

std::string RankKey::SecretFor(std::string_view job_id) const {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()), reinterpret_cast<const unsigned char*>(job_id.data()),
       job_id.size(), mac, &length);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[mac[i] >> 4]);
    hex.push_back(kHex[mac[i] & 15]);
  }
  return hex;
}

bool RankKey::Check(std::string_view job_id, std::string_view presented) const {
  const std::string expected = SecretFor(job_id);
  return presented.size() == expected.size() && CRYPTO_memcmp(presented.data(), expected.data(), expected.size()) == 0;
}

}  // namespace moex::cluster
