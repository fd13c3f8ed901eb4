#include "moex/transport/inprocess_transport.h"

#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "moex/core/str_cat.h"

namespace moex::transport {

struct InProcessHub::State {
  explicit State(int world) : world_size(world) {}
  int world_size;
  std::mutex mutex;
  // (receiver, sender, tag) -> messages in send order.
  std::map<std::tuple<int, int, uint64_t>, std::deque<std::vector<std::byte>>> mailboxes;
};

namespace {

class InProcessTransport final : public Transport {
 public:
  InProcessTransport(std::shared_ptr<InProcessHub::State> state, int rank)
      : Transport(rank, state->world_size), state_(std::move(state)) {}

  std::string_view name() const override { return "inproc"; }

 protected:
  absl::StatusOr<RequestId> PostSend(int peer, const std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    std::vector<std::byte> message(data, data + bytes);
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->mailboxes[{peer, rank(), tag}].push_back(std::move(message));
    }
    requests_.push_back({.done = true});
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<RequestId> PostRecv(int peer, std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    requests_.push_back({.peer = peer, .data = data, .bytes = bytes, .tag = tag});
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<bool> Test(RequestId id) override {
    Request& request = requests_[id];
    if (request.done) return true;
    std::lock_guard<std::mutex> lock(state_->mutex);
    auto it = state_->mailboxes.find({rank(), request.peer, request.tag});
    if (it == state_->mailboxes.end() || it->second.empty()) return false;
    std::vector<std::byte>& message = it->second.front();
    if (static_cast<int64_t>(message.size()) != request.bytes) {
      return absl::DataLossError(StrCat("message of ", message.size(), " bytes where ",
                                        request.bytes, " were expected"));
    }
    if (request.bytes > 0) std::memcpy(request.data, message.data(), request.bytes);
    it->second.pop_front();
    request.done = true;
    return true;
  }

  void Cancel(RequestId id) override { requests_[id].done = true; }

 private:
  struct Request {
    int peer = -1;
    std::byte* data = nullptr;
    int64_t bytes = 0;
    uint64_t tag = 0;
    bool done = false;
  };
  std::shared_ptr<InProcessHub::State> state_;
  // Request ids index this vector; it only grows, which is fine for tests.
  std::vector<Request> requests_;
};

}  // namespace

InProcessHub::InProcessHub(int world_size) : state_(std::make_shared<State>(world_size)) {}
InProcessHub::~InProcessHub() = default;
int InProcessHub::world_size() const { return state_->world_size; }

std::unique_ptr<Transport> InProcessHub::Connect(int rank) {
  return std::make_unique<InProcessTransport>(state_, rank);
}

}  // namespace moex::transport
