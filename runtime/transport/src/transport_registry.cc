#include "moex/transport/transport_registry.h"

#include "absl/strings/str_join.h"
#include "moex/core/str_cat.h"
#include "moex/transport/mpi_transport.h"
#ifdef MOEX_HAVE_UCX
#include "moex/transport/ucx_transport.h"
#endif

namespace moex::transport {
namespace {

using Factory = absl::StatusOr<std::unique_ptr<Transport>> (*)();

struct Entry {
  std::string_view name;
  Factory factory;            // null: not in this build
  std::string_view missing;   // why not, when null
};

absl::StatusOr<std::unique_ptr<Transport>> MakeMpi() { return CreateMpiTransport(); }

#ifdef MOEX_HAVE_UCX
absl::StatusOr<std::unique_ptr<Transport>> MakeUcx() {
  absl::StatusOr<std::unique_ptr<Transport>> bootstrap = CreateMpiTransport();
  if (!bootstrap.ok()) return bootstrap.status();
  return CreateUcxTransport(std::move(*bootstrap));
}
constexpr Factory kUcx = &MakeUcx;
#else
constexpr Factory kUcx = nullptr;
#endif

// The rows travel over NCCL, which the GPU plugin sets up over this host
// transport: what "nccl" makes here is the MPI side.
absl::StatusOr<std::unique_ptr<Transport>> MakeNcclHost() { return CreateMpiTransport(); }

constexpr Entry kTable[] = {
    {"mpi", &MakeMpi, ""},
    {"ucx", kUcx, "this moex was built without UCX (libucx-dev was not found)"},
    {"nccl", &MakeNcclHost, ""},
};

}  // namespace

std::vector<std::string> TransportNames() {
  std::vector<std::string> names;
  for (const Entry& entry : kTable) {
    if (entry.factory != nullptr) names.emplace_back(entry.name);
  }
  return names;
}

absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(std::string_view name) {
  for (const Entry& entry : kTable) {
    if (entry.name != name) continue;
    if (entry.factory == nullptr) {
      return absl::UnimplementedError(StrCat("transport '", name, "': ", entry.missing, "; this build has ",
                                             absl::StrJoin(TransportNames(), ", ")));
    }
    return entry.factory();
  }
  return absl::InvalidArgumentError(
      StrCat("transport '", name, "' is not one of ", absl::StrJoin(TransportNames(), ", ")));
}

}  // namespace moex::transport
