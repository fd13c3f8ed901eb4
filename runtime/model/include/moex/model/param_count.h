// Total and active parameters of a ModelArch, part by part.
//
// "Active" is what one token touches: every shared weight plus top-k routed
// experts per MoE layer. Following the convention, `active` counts
// the embedding and LM head; `active_excl_embedding` drops the input
// embedding (DeepSeek's and OpenAI's published convention, which keeps the
// output head). The vision encoder counts in the total and is inactive for
// text tokens. MTP modules are reported apart, as the model cards do.
#pragma once

#include <array>
#include <cstdint>

#include "moex/model/architecture.h"

namespace moex::model {

struct PartCount {
  int64_t total = 0;
  int64_t active = 0;
};

struct ParamCount {
  std::array<PartCount, kNumParts> parts{};
  int64_t total = 0;
  int64_t active = 0;
  int64_t active_excl_embedding = 0;
  PartCount mtp;  // not in total/active

  const PartCount& part(Part p) const { return parts[static_cast<int>(p)]; }
};

ParamCount CountParams(const ModelArch& arch);

// Adds one layer's parameters to `parts`.
void AddLayerParams(const LayerSpec& layer, std::array<PartCount, kNumParts>* parts);

}  // namespace moex::model
