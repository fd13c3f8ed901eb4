#include "moex/cluster/credentials.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "moex/core/str_cat.h"

namespace moex::cluster {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, std::string_view what) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot read the ", what, " '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(StrCat("the ", what, " '", path, "' is not PEM"));
  }
  return text.str();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFiles& files) {
  if (files.cert.empty() && files.key.empty()) {
    if (!files.ca.empty()) return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    return grpc::InsecureServerCredentials();
  }
  if (files.cert.empty() || files.key.empty()) return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  auto cert = ReadPem(files.cert, "certificate");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(files.key, "private key");
  if (!key.ok()) return key.status();
  pair.cert_chain = *cert;
  pair.private_key = *key;
  options.pem_key_cert_pairs.push_back(pair);
  if (!files.ca.empty()) {
    auto ca = ReadPem(files.ca, "client CA");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *ca;
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const TlsFiles& files) {
  if (files.ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  auto ca = ReadPem(files.ca, "CA certificate");
  if (!ca.ok()) return ca.status();
  options.pem_root_certs = *ca;
  if (!files.cert.empty() || !files.key.empty()) {
    auto cert = ReadPem(files.cert, "client certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(files.key, "client private key");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  if (path.empty()) return std::string();
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(StrCat("cannot read the token file '", path, "': ", std::strerror(errno)));
  // The mode of the file opened, not of whatever the path names later.
  struct stat info {};
  if (fstat(fd, &info) != 0) {
    const int stat_error = errno;
    close(fd);
    return absl::PermissionDeniedError(StrCat("cannot stat the token file '", path, "': ", std::strerror(stat_error)));
  }
  if ((info.st_mode & 077) != 0) {
    close(fd);
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(info.st_mode & 07777));
    return absl::PermissionDeniedError(StrCat("the token file '", path, "' is open to others (mode ", mode,
                                              "): only its owner may read it; chmod 600 ", path));
  }
  std::string text;
  char buffer[4096];
  ssize_t got = 0;
  while (text.find('\n') == std::string::npos && text.size() < (1 << 20) &&
         (got = read(fd, buffer, sizeof(buffer))) > 0) {
    text.append(buffer, static_cast<size_t>(got));
  }
  const int read_error = errno;
  close(fd);
  if (got < 0) return absl::PermissionDeniedError(StrCat("cannot read the token file '", path, "': ", std::strerror(read_error)));
  std::string token = text.substr(0, text.find('\n'));
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) return absl::InvalidArgumentError(StrCat("the token file '", path, "' is empty"));
  return token;
}

TlsFiles ClientTlsFromEnvironment() {
  auto get = [](const char* name) { return std::getenv(name) ? std::string(std::getenv(name)) : std::string(); };
  return {get("MOEX_TLS_CA"), get("MOEX_TLS_CERT"), get("MOEX_TLS_KEY")};
}

}  // namespace moex::cluster
