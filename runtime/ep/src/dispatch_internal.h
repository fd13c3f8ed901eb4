// What the dispatch paths share: the record a token travels as, and how a
// received row's (slot, weight) pairs are filled and checked.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "moex/ep/dispatch.h"
#include "moex/placement/placement.h"

namespace moex::ep::dispatch_internal {

// One dispatched token on the wire: H floats, then k (int32 local slot or
// -1, float weight) pairs.
inline int64_t RecordFloats(int64_t hidden, int64_t top_k) { return hidden + 2 * top_k; }
inline int64_t RecordBytes(int64_t hidden, int64_t top_k) {
  return RecordFloats(hidden, top_k) * static_cast<int64_t>(sizeof(float));
}
// The same token between hosts: its row in the dispatch dtype
// (WireRowBytes: fp32 as above; fp8 values padded to 4 bytes, then the
// scales), then the same k pairs. A multiple of 4 bytes.
inline int64_t WireRecordBytes(DispatchDtype dtype, int64_t hidden, int64_t top_k) {
  return WireRowBytes(dtype, hidden) + 2 * top_k * static_cast<int64_t>(sizeof(float));
}

// Rank d's shared segment: its receive area (records from the ranks of its
// host, source-rank-major, the own block's place unused) and, after it on a
// page boundary, its partial-sum area (a row for every row it receives),
// from the counts (counts[s * W + d] rows from s to d) and hosts every rank
// knows.
struct Areas {
  int64_t rows = 0, partial_rows = 0, partial_offset = 0, bytes = 0;
};
inline Areas AreasOf(const std::vector<int64_t>& counts, const std::vector<int>& host_of, int d,
                     int64_t record_bytes, int64_t hidden) {
  const int world = static_cast<int>(host_of.size());
  Areas a;
  for (int s = 0; s < world; ++s) {
    a.partial_rows += counts[s * world + d];
    if (host_of[s] == host_of[d]) a.rows += counts[s * world + d];
  }
  a.partial_offset = (a.rows * record_bytes + 4095) / 4096 * 4096;
  a.bytes = a.partial_offset + a.partial_rows * hidden * static_cast<int64_t>(sizeof(float));
  return a;
}

// The (slot, weight) pairs of token t for rank r: slots local to r, -1 (and
// weight 0) where another rank serves the pair.
void FillPairs(const Placement& placement, const DispatchLayout& layout, const float* topk_weights, int64_t t,
               int r, int32_t* slots, float* weights);

// Sizes the receive side of `out` for `rows` rows (its send_tokens are
// set); returns where this rank's own tokens start in the destination-major
// send order.
int64_t SizeReceived(DispatchResult* out, int64_t rows, int64_t k, int64_t local_slots, int me);

// Received row i is the record at `in` (H floats, then k slots, k
// weights): the row is used where it landed, its pairs copied out.
inline void TakeRecord(const float* in, int64_t H, int64_t k, int64_t i, DispatchResult* out, int32_t* slots,
                       float* weights) {
  out->recv_rows[i] = in;
  std::memcpy(slots, in + H, k * sizeof(int32_t));
  std::memcpy(weights, in + H + k, k * sizeof(float));
}

// Fills `out`'s received rows in source-rank order (out->recv_tokens[s]
// rows from rank s): the own block read from `x` in place, in the order
// `out->send_order` lists it from `own_begin`; every other rank's rows are
// its records, back to back from first_record[s] (the record layout above,
// `record` floats each). Checks and counts every row's slots.
absl::Status FillReceived(const Placement& placement, const DispatchLayout& layout, const Tensor& x,
                          const float* topk_weights, int me, int64_t own_begin,
                          const std::vector<const float*>& first_record, int64_t record, DispatchResult* out);

// Checks a received row's slots (a peer's bug or corrupted memory must not
// index past this rank's experts) and counts them per local expert.
absl::Status CountSlots(const int32_t* slots, int64_t k, int64_t local_slots, int me, int source,
                        DispatchResult* out);

}  // namespace moex::ep::dispatch_internal
