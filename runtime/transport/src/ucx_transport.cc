#include "moex/transport/ucx_transport.h"

#include <ucp/api/ucp.h>

#include <deque>
#include <vector>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"

namespace moex::transport {
namespace {

// ucs_status_t becomes Status here and nowhere else.
absl::Status UcxStatus(ucs_status_t status, std::string_view what) {
  if (status == UCS_OK) return absl::OkStatus();
  return absl::UnavailableError(StrCat(what, ": ", ucs_status_string(status)));
}

// Our tags are below 2^44; the low 20 bits carry the sender's rank so that a
// receive matches exactly one peer.
uint64_t UcxTag(uint64_t tag, int sender) { return (tag << 20) | static_cast<uint64_t>(sender); }
constexpr uint64_t kFullMask = ~uint64_t{0};

class UcxTransport final : public Transport {
 public:
  UcxTransport(std::unique_ptr<Transport> bootstrap, ucp_context_h context, ucp_worker_h worker)
      : Transport(bootstrap->rank(), bootstrap->world_size()),
        bootstrap_(std::move(bootstrap)),
        context_(context),
        worker_(worker),
        endpoints_(world_size(), nullptr) {}

  ~UcxTransport() override {
    if (failure().ok()) {
      // Deliver what is in flight and wait for every peer before closing, so
      // that nobody closes an endpoint a peer still sends on.
      Flush(Deadline::InSeconds(10));
      (void)bootstrap_->Barrier(Deadline::InSeconds(10));
    }
    for (size_t i = 0; i < requests_.size(); ++i) Cancel(static_cast<RequestId>(i));
    for (ucp_ep_h endpoint : endpoints_) {
      if (endpoint == nullptr) continue;
      ucp_request_param_t param{};
      param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      param.flags = UCP_EP_CLOSE_FLAG_FORCE;
      void* close = ucp_ep_close_nbx(endpoint, &param);
      Deadline deadline = Deadline::InSeconds(5);
      while (close != nullptr && !UCS_PTR_IS_ERR(close) &&
             ucp_request_check_status(close) == UCS_INPROGRESS && !deadline.Expired()) {
        ucp_worker_progress(worker_);
      }
      if (close != nullptr && !UCS_PTR_IS_ERR(close)) ucp_request_free(close);
    }
    ucp_worker_destroy(worker_);
    ucp_cleanup(context_);
  }

  std::string_view name() const override { return "ucx"; }

  absl::Status Connect() {
    ucp_address_t* address = nullptr;
    size_t length = 0;
    MOEX_RETURN_IF_ERROR(UcxStatus(ucp_worker_get_address(worker_, &address, &length),
                                   "ucp_worker_get_address"));
    const int world = world_size();
    std::vector<int64_t> send_bytes(world, static_cast<int64_t>(length)), recv_bytes(world);
    absl::Status status = bootstrap_->ExchangeCounts(send_bytes, recv_bytes, Deadline::InSeconds(60));
    std::vector<std::byte> mine, theirs;
    std::vector<int64_t> offsets(world + 1, 0);
    if (status.ok()) {
      for (int r = 0; r < world; ++r) {
        const auto* bytes = reinterpret_cast<const std::byte*>(address);
        mine.insert(mine.end(), bytes, bytes + length);
        offsets[r + 1] = offsets[r] + recv_bytes[r];
      }
      theirs.resize(offsets[world]);
      status = bootstrap_->AllToAllV(mine.data(), send_bytes, theirs.data(), recv_bytes,
                                     Deadline::InSeconds(60));
    }
    ucp_worker_release_address(worker_, address);
    MOEX_RETURN_IF_ERROR(status);
    for (int r = 0; r < world; ++r) {
      ucp_ep_params_t params{};
      params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
      params.address = reinterpret_cast<const ucp_address_t*>(theirs.data() + offsets[r]);
      MOEX_RETURN_IF_ERROR(UcxStatus(ucp_ep_create(worker_, &params, &endpoints_[r]),
                                     StrCat("ucp_ep_create to rank ", r)));
    }
    return absl::OkStatus();
  }

 protected:
  absl::StatusOr<RequestId> PostSend(int peer, const std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    ucp_request_param_t param{};
    void* handle = ucp_tag_send_nbx(endpoints_[peer], data, static_cast<size_t>(bytes),
                                    UcxTag(tag, rank()), &param);
    if (UCS_PTR_IS_ERR(handle)) {
      return UcxStatus(UCS_PTR_STATUS(handle), StrCat("ucp_tag_send_nbx to rank ", peer));
    }
    requests_.push_back({.handle = static_cast<void*>(handle), .expected = -1});
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<RequestId> PostRecv(int peer, std::byte* data, int64_t bytes,
                                     uint64_t tag) override {
    requests_.push_back({.expected = bytes});
    Request& request = requests_.back();
    ucp_request_param_t param{};
    // UCX 1.13 leaves recv_info unfilled when a receive completes at once, so
    // every receive returns a request and reports its length to the callback.
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                         UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    param.cb.recv = &UcxTransport::OnReceived;
    param.user_data = &request;
    void* handle = ucp_tag_recv_nbx(worker_, data, static_cast<size_t>(bytes), UcxTag(tag, peer),
                                    kFullMask, &param);
    if (UCS_PTR_IS_ERR(handle)) {
      return UcxStatus(UCS_PTR_STATUS(handle), StrCat("ucp_tag_recv_nbx from rank ", peer));
    }
    request.handle = handle;
    return static_cast<RequestId>(requests_.size() - 1);
  }

  absl::StatusOr<bool> Test(RequestId id) override {
    Request& request = requests_[id];
    if (request.handle == nullptr) return true;
    ucs_status_t status = ucp_request_check_status(request.handle);
    if (status == UCS_INPROGRESS) return false;
    if (request.expected >= 0 && !request.callback_ran) return false;  // info not delivered yet
    ucp_request_free(request.handle);
    request.handle = nullptr;
    MOEX_RETURN_IF_ERROR(UcxStatus(status, "ucp request"));
    if (request.expected >= 0) MOEX_RETURN_IF_ERROR(CheckLength(request));
    if (requests_.size() > 4096) Compact();
    return true;
  }

  void Cancel(RequestId id) override {
    Request& request = requests_[id];
    if (request.handle == nullptr) return;
    ucp_request_cancel(worker_, request.handle);
    ucp_request_free(request.handle);
    request.handle = nullptr;
    request.cancelled = true;  // its callback may still run: keep the slot
  }

  void Progress() override { ucp_worker_progress(worker_); }

 private:
  struct Request {
    void* handle = nullptr;
    int64_t expected = -1;  // bytes a receive expects; -1 for sends
    bool callback_ran = false;
    bool cancelled = false;
    ucp_tag_recv_info_t info{};
  };

  // Runs inside ucp_worker_progress when a posted receive completes.
  static void OnReceived(void* /*handle*/, ucs_status_t /*status*/, const ucp_tag_recv_info_t* info,
                         void* user_data) {
    auto* request = static_cast<Request*>(user_data);
    if (info != nullptr) request->info = *info;
    request->callback_ran = true;
  }

  static absl::Status CheckLength(const Request& request) {
    if (static_cast<int64_t>(request.info.length) != request.expected) {
      return absl::DataLossError(StrCat("received ", request.info.length, " bytes where ",
                                        request.expected, " were expected"));
    }
    return absl::OkStatus();
  }

  void Compact() {
    for (const Request& request : requests_) {
      if (request.handle != nullptr || request.cancelled) return;
    }
    requests_.clear();
  }

  void Flush(Deadline deadline) {
    ucp_request_param_t param{};
    void* flush = ucp_worker_flush_nbx(worker_, &param);
    while (flush != nullptr && !UCS_PTR_IS_ERR(flush) &&
           ucp_request_check_status(flush) == UCS_INPROGRESS && !deadline.Expired()) {
      ucp_worker_progress(worker_);
    }
    if (flush != nullptr && !UCS_PTR_IS_ERR(flush)) ucp_request_free(flush);
  }

  std::unique_ptr<Transport> bootstrap_;
  ucp_context_h context_;
  ucp_worker_h worker_;
  std::vector<ucp_ep_h> endpoints_;
  // A deque: UCX holds pointers to a request's `info` until it completes.
  std::deque<Request> requests_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> CreateUcxTransport(std::unique_ptr<Transport> bootstrap) {
  ucp_config_t* config = nullptr;
  MOEX_RETURN_IF_ERROR(UcxStatus(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_TAG;
  ucp_context_h context = nullptr;
  ucs_status_t status = ucp_init(&params, config, &context);
  ucp_config_release(config);
  MOEX_RETURN_IF_ERROR(UcxStatus(status, "ucp_init"));
  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;
  ucp_worker_h worker = nullptr;
  status = ucp_worker_create(context, &worker_params, &worker);
  if (status != UCS_OK) {
    ucp_cleanup(context);
    return UcxStatus(status, "ucp_worker_create");
  }
  auto transport = std::make_unique<UcxTransport>(std::move(bootstrap), context, worker);
  MOEX_RETURN_IF_ERROR(transport->Connect());
  return std::unique_ptr<Transport>(std::move(transport));
}

}  // namespace moex::transport
