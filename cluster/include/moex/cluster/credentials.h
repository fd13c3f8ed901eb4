// TLS and the bearer token, for the controller and its clients, in one
// place. Without TLS files, plaintext (the controller then listens on
// loopback unless told otherwise).
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace moex::cluster {

struct TlsFiles {
  std::string ca;    // client: the CA that signed the controller; server: the CA of client certificates (mTLS)
  std::string cert;  // a PEM certificate (server's, or the client's for mTLS)
  std::string key;   // its PEM private key
};

// Server: cert and key required for TLS; `ca` set demands and verifies
// client certificates.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFiles& files);
// Client: `ca` set means TLS; cert and key add a client certificate.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientCredentials(const TlsFiles& files);
// Client files from MOEX_TLS_CA, MOEX_TLS_CERT, MOEX_TLS_KEY (what the
// controller gives its ranks).
TlsFiles ClientTlsFromEnvironment();

// The bearer token in the first line of `path` ("" for no path). Refused,
// naming the file, when it cannot be read, is empty, or is open to anyone
// but its owner (any group or other permission bit, as ssh refuses a
// private key): the token lets whoever holds it run jobs.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

}  // namespace moex::cluster
