// Ranks as threads of one process, for unit tests. A hub holds one mailbox
// per (receiver, sender, tag); sends copy into it and complete at once.
#pragma once

#include <memory>

#include "moex/transport/transport.h"

namespace moex::transport {

class InProcessHub {
 public:
  explicit InProcessHub(int world_size);
  ~InProcessHub();
  InProcessHub(const InProcessHub&) = delete;
  InProcessHub& operator=(const InProcessHub&) = delete;

  int world_size() const;
  // The transport of `rank`; use each from one thread.
  std::unique_ptr<Transport> Connect(int rank);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace moex::transport
