#include "transport_conformance.h"

#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "moex/core/str_cat.h"

namespace moex::transport::testing {
namespace {

using ::testing::HasSubstr;

Deadline Soon() { return Deadline::InSeconds(30); }

// The byte rank `from` puts at position `i` of its block for rank `to`.
std::byte Pattern(int from, int to, int64_t i) {
  return static_cast<std::byte>((from * 31 + to * 7 + i * 13) & 0xff);
}

// Rank r sends (r + 2 * to) % 5 * 37 bytes to rank `to`: some blocks empty,
// all different.
int64_t BlockBytes(int from, int to) { return (from + 2 * to) % 5 * 37; }

}  // namespace

void CheckAllToAllV(Transport& t) {
  const int world = t.world_size(), me = t.rank();
  std::vector<int64_t> send_bytes(world), recv_bytes(world);
  for (int r = 0; r < world; ++r) {
    send_bytes[r] = BlockBytes(me, r);
    recv_bytes[r] = BlockBytes(r, me);
  }
  // The counts exchange must deliver exactly what the peers computed.
  std::vector<int64_t> exchanged(world, -1);
  ASSERT_TRUE(t.ExchangeCounts(send_bytes, exchanged, Soon()).ok());
  EXPECT_EQ(exchanged, recv_bytes);

  std::vector<std::byte> send, recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), int64_t{0}));
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < send_bytes[r]; ++i) send.push_back(Pattern(me, r, i));
  }
  absl::Status status = t.AllToAllV(send.data(), send_bytes, recv.data(), recv_bytes, Soon());
  ASSERT_TRUE(status.ok()) << status;
  int64_t offset = 0;
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < recv_bytes[r]; ++i) {
      ASSERT_EQ(recv[offset + i], Pattern(r, me, i)) << "from rank " << r << " byte " << i;
    }
    offset += recv_bytes[r];
  }
}

void CheckAllToAllVOffsets(Transport& t) {
  const int world = t.world_size(), me = t.rank();
  // Blocks in reverse rank order with a 3-byte gap before each, on both
  // sides: where each block is read and lands is the offsets' business only.
  std::vector<int64_t> send_bytes(world), recv_bytes(world), send_offsets(world), recv_offsets(world);
  int64_t send_end = 0, recv_end = 0;
  for (int r = world - 1; r >= 0; --r) {
    send_bytes[r] = BlockBytes(me, r);
    recv_bytes[r] = BlockBytes(r, me);
    send_offsets[r] = send_end + 3;
    recv_offsets[r] = recv_end + 3;
    send_end = send_offsets[r] + send_bytes[r];
    recv_end = recv_offsets[r] + recv_bytes[r];
  }
  const std::byte gap{0xee};
  std::vector<std::byte> send(send_end, gap), recv(recv_end, gap);
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < send_bytes[r]; ++i) send[send_offsets[r] + i] = Pattern(me, r, i);
  }
  absl::Status status =
      t.AllToAllV(send.data(), send_bytes, send_offsets, recv.data(), recv_bytes, recv_offsets, Soon());
  ASSERT_TRUE(status.ok()) << status;
  std::vector<bool> written(recv_end, false);
  for (int r = 0; r < world; ++r) {
    for (int64_t i = 0; i < recv_bytes[r]; ++i) {
      ASSERT_EQ(recv[recv_offsets[r] + i], Pattern(r, me, i)) << "from rank " << r << " byte " << i;
      written[recv_offsets[r] + i] = true;
    }
  }
  for (int64_t i = 0; i < recv_end; ++i) {
    if (!written[i]) {
      ASSERT_EQ(recv[i], gap) << "byte " << i << " between blocks was written";
    }
  }
}

void CheckPointToPoint(Transport& t) {
  const int world = t.world_size(), me = t.rank();
  if (world < 2) return;
  int next = (me + 1) % world, prev = (me + world - 1) % world;
  // Two messages on different tags, received in the opposite order.
  std::vector<int32_t> a(100, me), b(7, -me);
  std::vector<int32_t> got_a(100), got_b(7);
  if (me % 2 == 0) {
    ASSERT_TRUE(t.Send(next, a.data(), 400, 1, Soon()).ok());
    ASSERT_TRUE(t.Send(next, b.data(), 28, 2, Soon()).ok());
    ASSERT_TRUE(t.Recv(prev, got_b.data(), 28, 2, Soon()).ok());
    ASSERT_TRUE(t.Recv(prev, got_a.data(), 400, 1, Soon()).ok());
  } else {
    ASSERT_TRUE(t.Recv(prev, got_b.data(), 28, 2, Soon()).ok());
    ASSERT_TRUE(t.Recv(prev, got_a.data(), 400, 1, Soon()).ok());
    ASSERT_TRUE(t.Send(next, a.data(), 400, 1, Soon()).ok());
    ASSERT_TRUE(t.Send(next, b.data(), 28, 2, Soon()).ok());
  }
  EXPECT_EQ(got_a, std::vector<int32_t>(100, prev));
  EXPECT_EQ(got_b, std::vector<int32_t>(7, -prev));
  ASSERT_TRUE(t.Barrier(Soon()).ok());
}

void CheckAllReduce(Transport& t) {
  const int world = t.world_size(), me = t.rank();
  std::vector<int64_t> counts = {me, 1, 1000 * me};
  ASSERT_TRUE(t.AllReduceSum(std::span<int64_t>(counts), Soon()).ok());
  int64_t ranks = int64_t{world} * (world - 1) / 2;
  EXPECT_EQ(counts, (std::vector<int64_t>{ranks, world, 1000 * ranks}));
  // Values whose sum depends on the order: every rank must get the same bits.
  std::vector<double> values = {1e16 * (me % 2 ? 1 : -1) + me * 0.1, 0.3 * me};
  ASSERT_TRUE(t.AllReduceSum(std::span<double>(values), Soon()).ok());
  std::vector<double> all(2 * world);
  std::vector<int64_t> bytes(world, 2 * sizeof(double));
  std::vector<double> mine(2 * world);
  for (int r = 0; r < world; ++r) {
    mine[2 * r] = values[0];
    mine[2 * r + 1] = values[1];
  }
  ASSERT_TRUE(t.AllToAllV(reinterpret_cast<std::byte*>(mine.data()), bytes,
                          reinterpret_cast<std::byte*>(all.data()), bytes, Soon())
                  .ok());
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(all[2 * r], values[0]) << "rank " << r << " summed differently";
    EXPECT_EQ(all[2 * r + 1], values[1]);
  }
}

void CheckManyOperations(Transport& t) {
  for (int i = 0; i < 200; ++i) {
    std::vector<int64_t> value = {i};
    ASSERT_TRUE(t.AllReduceSum(std::span<int64_t>(value), Soon()).ok());
    ASSERT_EQ(value[0], int64_t{i} * t.world_size());
  }
}

void CheckBadArguments(Transport& t) {
  std::vector<int64_t> too_few(t.world_size() + 1, 0);
  absl::Status status = t.AllToAllV(nullptr, too_few, nullptr, too_few, Soon());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("counts"));
  int32_t word = 0;
  EXPECT_EQ(t.Send(t.rank(), &word, 4, 1, Soon()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.Recv(t.world_size(), &word, 4, 1, Soon()).code(), absl::StatusCode::kInvalidArgument);
  // Every rank made the same failed calls; the transport still works.
  ASSERT_TRUE(t.Barrier(Soon()).ok());
}

void RunConformance(Transport& t) {
  CheckAllToAllV(t);
  CheckAllToAllVOffsets(t);
  CheckPointToPoint(t);
  CheckAllReduce(t);
  CheckManyOperations(t);
  CheckBadArguments(t);
}

void CheckMissingRankIsNamed(Transport& t, int absent) {
  if (t.rank() == absent) return;
  absl::Status status = t.Barrier(Deadline::InSeconds(0.5));
  ASSERT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(StrCat("waiting for rank(s) ", absent)));
  EXPECT_THAT(std::string(status.message()), HasSubstr(StrCat("rank ", t.rank(), ":")));
  // The ranks it names, as data (what moex run turns into hosts).
  EXPECT_EQ(MissingRanks(status), std::vector<int>{absent});
  EXPECT_TRUE(MissingRanks(absl::InternalError("no ranks")).empty());
  // After a failure the transport refuses work instead of mixing up messages.
  absl::Status after = t.Barrier(Deadline::InSeconds(0.5));
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(after.message()), HasSubstr("failed earlier"));
}

}  // namespace moex::transport::testing
