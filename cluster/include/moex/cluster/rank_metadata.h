// What a rank's calls to the controller carry beside their request: gRPC
// metadata, so that the wire messages (proto/moex/v1/cluster.proto) stay as
// they are and older callers still work.
#pragma once

namespace moex::cluster {

// The attempt a rank was launched as (its `moex worker --attempt N`), in
// decimal. The controller refuses calls from an attempt that has ended; a
// call without it is taken as the current attempt's.
inline constexpr char kAttemptMetadata[] = "moex-attempt";

}  // namespace moex::cluster
