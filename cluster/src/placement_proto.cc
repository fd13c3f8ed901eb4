#include "moex/cluster/placement_proto.h"

#include "moex/core/str_cat.h"

namespace moex::cluster {

moex::v1::Placement ToProto(const placement::Placement& placement) {
  moex::v1::Placement out;
  out.set_version(placement.version());
  out.set_num_experts(placement.num_experts());
  for (int64_t expert : placement.slot_experts()) out.add_slot_expert(expert);
  for (int64_t slots : placement.slots_per_rank()) out.add_slots_per_rank(slots);
  return out;
}

absl::StatusOr<placement::Placement> FromProto(const moex::v1::Placement& proto) {
  absl::StatusOr<placement::Placement> made = placement::Placement::FromSlots(
      proto.num_experts(), {proto.slot_expert().begin(), proto.slot_expert().end()},
      {proto.slots_per_rank().begin(), proto.slots_per_rank().end()}, proto.version());
  if (!made.ok()) {
    return absl::Status(made.status().code(),
                        StrCat("placement version ", proto.version(), ": ", made.status().message()));
  }
  return made;
}

}  // namespace moex::cluster
