// The one conversion between placement::Placement and its wire form,
// moex.v1.Placement (proto/moex/v1/placement.proto). The controller's records
// and the ranks' fetches both go through it.
#pragma once

#include "absl/status/statusor.h"
#include "moex/placement/placement.h"
#include "moex/v1/placement.pb.h"

namespace moex::cluster {

moex::v1::Placement ToProto(const placement::Placement& placement);
// Untrusted input (a record, a reply): every inconsistency is an error that
// names the version.
absl::StatusOr<placement::Placement> FromProto(const moex::v1::Placement& proto);

}  // namespace moex::cluster
