#include "moex/transport/gather_strings.h"

#include <cstddef>
#include <cstdint>

#include "moex/core/status_macros.h"

namespace moex::transport {

absl::StatusOr<std::vector<std::string>> AllGatherStrings(Transport& transport, std::string_view mine,
                                                          Deadline deadline) {
  const int world = transport.world_size();
  const std::vector<int64_t> send_lengths(world, static_cast<int64_t>(mine.size()));
  std::vector<int64_t> lengths(world, 0);
  MOEX_RETURN_IF_ERROR(transport.ExchangeCounts(send_lengths, lengths, deadline));
  // Every block is the same bytes: every send offset is 0.
  const std::vector<int64_t> send_offsets(world, 0);
  std::vector<int64_t> recv_offsets(world, 0);
  int64_t total = 0;
  for (int r = 0; r < world; ++r) {
    recv_offsets[r] = total;
    total += lengths[r];
  }
  std::string all(static_cast<size_t>(total), '\0');
  MOEX_RETURN_IF_ERROR(transport.AllToAllV(reinterpret_cast<const std::byte*>(mine.data()), send_lengths,
                                           send_offsets, reinterpret_cast<std::byte*>(all.data()), lengths,
                                           recv_offsets, deadline));
  std::vector<std::string> out(world);
  for (int r = 0; r < world; ++r) {
    out[r] = all.substr(static_cast<size_t>(recv_offsets[r]), static_cast<size_t>(lengths[r]));
  }
  return out;
}

}  // namespace moex::transport
