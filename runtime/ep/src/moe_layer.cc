#include "moex/ep/moe_layer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#include "moex/core/status_macros.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/kernels/expert_ffn.h"
#include "moex/kernels/fp8_rows.h"
#include "moex/kernels/router.h"

namespace moex::ep {
namespace {

double Since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

const float* OrNull(const std::vector<float>& v) { return v.empty() ? nullptr : v.data(); }

kernels::ExpertWeightsView View(const ExpertWeights& w, int64_t hidden, const model::ExpertMlpSpec& mlp) {
  return {.gate = mlp.gated() ? &w.gate : nullptr,
          .up = &w.up,
          .down = &w.down,
          .gate_bias = OrNull(w.gate_bias),
          .up_bias = OrNull(w.up_bias),
          .down_bias = OrNull(w.down_bias),
          .hidden = hidden,
          .width = w.up.rows,
          .mlp = mlp};
}

}  // namespace

std::pair<int64_t, int64_t> TokenSlice(int64_t total, int world, int rank) {
  int64_t base = total / world, extra = total % world;
  int64_t first = rank * base + std::min<int64_t>(rank, extra);
  return {first, base + (rank < extra ? 1 : 0)};
}

absl::Status RouteTokens(const MoeLayerSpec& spec, const MoeWeights& weights, const Tensor& x,
                         std::span<const int64_t> token_ids, std::vector<int32_t>* topk_idx,
                         std::vector<float>* topk_weights) {
  const int64_t T = x.dim(0), E = spec.num_experts, k = spec.top_k;
  std::vector<int32_t> chosen;
  if (spec.hash_routed) {
    // The experts of each token are its row of the token table.
    if (static_cast<int64_t>(token_ids.size()) != T) {
      return absl::InvalidArgumentError(StrCat("layer ", spec.layer, " is hash-routed (experts from its token-id "
                                               "table by input_ids) and has ", token_ids.size(), " token ids for ", T,
                                               " tokens"));
    }
    if (static_cast<int64_t>(weights.token_table.size()) != spec.vocab_size * k) {
      return absl::FailedPreconditionError(StrCat("layer ", spec.layer, " is hash-routed and its token table holds ",
                                                  weights.token_table.size(), " entries, not ", spec.vocab_size, " x ",
                                                  k));
    }
    chosen.resize(T * k);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t id = token_ids[t];
      if (id < 0 || id >= spec.vocab_size) {
        return absl::InvalidArgumentError(StrCat("token ", t, " has id ", id, ", outside the vocabulary [0, ",
                                                 spec.vocab_size, ") of layer ", spec.layer, "'s token table"));
      }
      std::copy_n(weights.token_table.begin() + id * k, k, chosen.begin() + t * k);
    }
  }
  std::vector<float> logits(T * E), scratch(2 * E);
  kernels::RouterLogits(x.data(), T, spec.hidden, weights.router.data(), E, logits.data());
  if (!weights.router_bias.values.empty()) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t e = 0; e < E; ++e) logits[t * E + e] += weights.router_bias.values[e];
    }
  }
  topk_idx->resize(T * k);
  topk_weights->resize(T * k);
  kernels::RouteParams params{.spec = spec.router, .num_experts = E, .top_k = k,
                              .correction_bias = weights.correction_bias.values.empty()
                                                     ? nullptr
                                                     : weights.correction_bias.data()};
  if (spec.hash_routed) {
    kernels::RouteByTable(params, logits.data(), T, chosen.data(), topk_idx->data(), topk_weights->data(),
                          scratch.data());
  } else {
    kernels::Route(params, logits.data(), T, topk_idx->data(), topk_weights->data(), scratch.data());
  }
  return absl::OkStatus();
}

absl::Status MoeLayer::Check(const MoeLayerSpec& spec, const Placement& placement, const MoeWeights& weights,
                             int rank, int world_size) {
  MOEX_RETURN_IF_ERROR(kernels::CheckRouterSupported(spec.router, spec.num_experts, spec.top_k));
  if (placement.num_experts() != spec.num_experts) {
    return absl::InvalidArgumentError(StrCat("placement has ", placement.num_experts(),
                                             " experts, the layer ", spec.num_experts));
  }
  if (placement.world_size() != world_size) {
    return absl::InvalidArgumentError(StrCat("rank ", rank, ": the placement is for ", placement.world_size(),
                                             " ranks, the transport has ", world_size));
  }
  for (int64_t s = 0; s < placement.num_local_slots(rank); ++s) {
    int64_t expert = placement.slot_expert(placement.first_slot(rank) + s);
    if (!weights.experts.count(expert)) {
      return absl::FailedPreconditionError(StrCat("rank ", rank, " holds expert ", expert,
                                                  " but has no weights for it"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<MoeLayer> MoeLayer::Create(MoeLayerSpec spec, Placement placement, MoeWeights weights,
                                          Dispatcher dispatcher) {
  MOEX_RETURN_IF_ERROR(Check(spec, placement, weights, dispatcher.rank(), dispatcher.world_size()));
  return MoeLayer(std::move(spec), std::move(placement), std::move(weights), std::move(dispatcher));
}

absl::StatusOr<MoeLayer> MoeLayer::Create(MoeLayerSpec spec, Placement placement, MoeWeights weights,
                                          transport::Transport& transport, Deadline deadline,
                                          std::string_view dispatch, DispatchDtype dtype) {
  MOEX_RETURN_IF_ERROR(Check(spec, placement, weights, transport.rank(), transport.world_size()));
  MOEX_ASSIGN_OR_RETURN(DispatchOptions options, DispatchOptions::FromEnvironment(dispatch));
  options.dtype = dtype;
  MOEX_ASSIGN_OR_RETURN(Dispatcher dispatcher, Dispatcher::Create(transport, std::move(options), deadline));
  return MoeLayer(std::move(spec), std::move(placement), std::move(weights), std::move(dispatcher));
}

absl::Status MoeLayer::SwitchPlacement(Placement next, std::map<int64_t, ExpertWeights> incoming) {
  if (next.num_experts() != spec_.num_experts || next.world_size() != placement_.world_size()) {
    return absl::InvalidArgumentError(StrCat("rank ", rank_, ": the new placement is for ", next.num_experts(),
                                             " experts on ", next.world_size(), " ranks; the layer has ",
                                             spec_.num_experts, " on ", placement_.world_size()));
  }
  std::map<int64_t, ExpertWeights> experts;
  for (int64_t s = 0; s < next.num_local_slots(rank_); ++s) {
    const int64_t e = next.slot_expert(next.first_slot(rank_) + s);
    if (experts.count(e)) continue;
    if (auto it = incoming.find(e); it != incoming.end()) {
      if (it->second.format() != weights_.expert_format) {
        return absl::InvalidArgumentError(StrCat("rank ", rank_, ": expert ", e, " arrived in ",
                                                 WeightFormatName(it->second.format()), "; the layer holds its experts in ",
                                                 WeightFormatName(weights_.expert_format)));
      }
      experts[e] = std::move(it->second);
    } else if (auto held = weights_.experts.find(e); held != weights_.experts.end()) {
      experts[e] = held->second;
    } else {
      return absl::FailedPreconditionError(StrCat("rank ", rank_, " cannot switch placement: it neither holds nor received expert ", e));
    }
  }
  weights_.experts = std::move(experts);
  placement_ = std::move(next);
  return absl::OkStatus();
}

void MoeLayer::RunExperts(const DispatchResult& received, float* partial, StepStats* stats) {
  const int64_t R = received.num_recv(), H = spec_.hidden, k = spec_.top_k;
  const int64_t slots = placement_.num_local_slots(rank_);
  stats->tokens_per_local_slot.assign(slots, 0);
  // Rows per local expert, in one pass over the received pairs.
  std::vector<std::vector<std::pair<int64_t, float>>> rows(slots);
  for (int64_t s = 0; s < slots; ++s) rows[s].reserve(received.num_recv_tokens_per_expert[s]);
  for (int64_t i = 0; i < R; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      int32_t s = received.recv_local_slot[i * k + j];
      if (s >= 0) rows[s].emplace_back(i, received.recv_weights[i * k + j]);
    }
  }
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t n = static_cast<int64_t>(rows[s].size());
    stats->tokens_per_local_slot[s] = n;
    stats->routed_pairs += n;
    if (n == 0) continue;
    const ExpertWeights& w = weights_.experts.at(placement_.slot_expert(placement_.first_slot(rank_) + s));
    // Expert-major: this expert's tokens side by side, then one FFN call.
    if (static_cast<int64_t>(gathered_.size()) < n * H) gathered_.resize(n * H);
    if (static_cast<int64_t>(expert_out_.size()) < n * H) expert_out_.resize(n * H);
    int64_t need = kernels::ExpertFfnWorkspace(n, w.up.rows, H);
    if (static_cast<int64_t>(workspace_.size()) < need) workspace_.resize(need);
    const bool on_input = spec_.router.weight_on_input;
    for (int64_t i = 0; i < n; ++i) {
      const float* row = received.recv_rows[rows[s][i].first];
      float* to = &gathered_[i * H];
      if (on_input) {
        // Llama 4: the expert sees its input scaled by the routing weight.
        for (int64_t h = 0; h < H; ++h) to[h] = row[h] * rows[s][i].second;
      } else {
        std::memcpy(to, row, H * sizeof(float));
      }
    }
    kernels::ExpertFfn(View(w, H, spec_.mlp), gathered_.data(), n, workspace_.data(), expert_out_.data());
    // Weighted partial sums form here, on the expert's rank.
    for (int64_t i = 0; i < n; ++i) {
      float* out = partial + rows[s][i].first * H;
      const float weight = on_input ? 1.0f : rows[s][i].second;
      const float* y = &expert_out_[i * H];
      for (int64_t h = 0; h < H; ++h) out[h] += weight * y[h];
    }
  }
}

void MoeLayer::AddSharedExpert(const Tensor& x, Tensor* y) {
  if (!weights_.shared) return;
  const int64_t T = x.dim(0), H = spec_.hidden;
  if (T == 0) return;
  if (static_cast<int64_t>(expert_out_.size()) < T * H) expert_out_.resize(T * H);
  int64_t need = kernels::ExpertFfnWorkspace(T, spec_.shared_width, H);
  if (static_cast<int64_t>(workspace_.size()) < need) workspace_.resize(need);
  kernels::ExpertFfn(View(*weights_.shared, H, spec_.shared_mlp), x.data(), T, workspace_.data(), expert_out_.data());
  for (int64_t t = 0; t < T; ++t) {
    float gate = 1.0f;
    if (!weights_.shared_gate.values.empty()) {
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) dot += static_cast<double>(x.row(t)[h]) * weights_.shared_gate.values[h];
      gate = static_cast<float>(1.0 / (1.0 + std::exp(-dot)));
    }
    for (int64_t h = 0; h < H; ++h) y->row(t)[h] += gate * expert_out_[t * H + h];
  }
}

absl::Status MoeLayer::Forward(transport::Transport& transport, const Tensor& x, std::span<const int64_t> token_ids,
                               int64_t first_token,
                               Deadline deadline, Tensor* y, StepStats* stats) {
  const int64_t H = spec_.hidden, k = spec_.top_k;
  if (x.shape.size() != 2 || x.dim(1) != H) {
    return absl::InvalidArgumentError(StrCat("rank ", rank_, ": hidden states have shape ",
                                             ShapeString(x.shape), ", the layer needs [tokens, ", H, "]"));
  }
  const int64_t T = x.dim(0);
  *stats = StepStats{};
  stats->tokens = T;

  auto start = std::chrono::steady_clock::now();
  if (absl::Status routed = RouteTokens(spec_, weights_, x, token_ids, &topk_idx_, &topk_weights_); !routed.ok()) {
    return absl::Status(routed.code(), StrCat("rank ", rank_, ": ", routed.message()));
  }
  DispatchLayout layout = GetDispatchLayout(placement_, topk_idx_.data(), T, k, first_token);
  for (int r = 0; r < layout.world_size; ++r) {
    if (r != rank_) stats->remote_token_copies += layout.num_tokens_per_rank[r];
  }
  stats->route_seconds = Since(start);

  start = std::chrono::steady_clock::now();
  MOEX_RETURN_IF_ERROR(
      dispatcher_.Dispatch(transport, placement_, x, layout, topk_weights_.data(), deadline, &received_));
  stats->dispatch_seconds = Since(start);
  stats->dispatch_bytes = received_.bytes_sent;
  stats->internode_bytes = received_.internode_bytes_sent;
  stats->internode_floor_bytes = received_.internode_floor_bytes;
  stats->received_tokens = received_.num_recv();

  start = std::chrono::steady_clock::now();
  float* partial = dispatcher_.PartialBuffer(received_);  // zeroed
  RunExperts(received_, partial, stats);
  y->shape = {T, H};
  y->values.assign(T * H, 0.0f);
  AddSharedExpert(x, y);
  stats->expert_seconds = Since(start);

  start = std::chrono::steady_clock::now();
  MOEX_RETURN_IF_ERROR(dispatcher_.Combine(transport, received_, partial, y, &stats->combine_bytes, deadline));
  stats->combine_internode_bytes = dispatcher_.last_combine_internode_bytes();
  stats->combine_seconds = Since(start);
  return absl::OkStatus();
}

absl::StatusOr<Tensor> ReferenceForward(const MoeLayerSpec& spec, const MoeWeights& weights, const Tensor& x,
                                        std::span<const int64_t> token_ids, const std::vector<int64_t>& slice_tokens,
                                        DispatchDtype dtype) {
  const int64_t H = spec.hidden, k = spec.top_k;
  int64_t T = 0;
  for (int64_t count : slice_tokens) T += count;
  T = std::min<int64_t>(T, x.dim(0));  // slices past x's rows are not routed
  // Naive MLP in double on the dequantised weights: no BLAS, no dispatch,
  // nothing shared with the distributed path but the router.
  struct Dense {
    Tensor gate, up, down;
    const ExpertWeights* w;
  };
  auto dense = [](const ExpertWeights& w) {
    return Dense{w.gate.empty() ? Tensor() : w.gate.ToTensor(), w.up.ToTensor(), w.down.ToTensor(), &w};
  };
  auto ffn = [H](const Dense& w, const model::ExpertMlpSpec& mlp, const float* in, double scale,
                 std::vector<double>* out) {
    const int64_t F = w.up.dim(0);
    auto bias = [](const std::vector<float>& b, int64_t i) { return b.empty() ? 0.0 : static_cast<double>(b[i]); };
    std::vector<double> act(F);
    const double limit = mlp.swiglu_limit;
    for (int64_t f = 0; f < F; ++f) {
      double g = 0, u = 0;
      for (int64_t h = 0; h < H; ++h) {
        if (mlp.gated()) g += static_cast<double>(w.gate.values[f * H + h]) * in[h] * scale;
        u += static_cast<double>(w.up.values[f * H + h]) * in[h] * scale;
      }
      g += bias(w.w->gate_bias, f);
      u += bias(w.w->up_bias, f);
      switch (mlp.activation) {
        case model::ExpertActivation::kSilu:
          if (limit > 0) {
            g = std::min(g, limit);
            u = std::clamp(u, -limit, limit);
          }
          act[f] = g / (1.0 + std::exp(-g)) * u;
          break;
        case model::ExpertActivation::kSwigluOai:
          g = std::min(g, limit);
          u = std::clamp(u, -limit, limit);
          act[f] = (u + 1.0) * g / (1.0 + std::exp(-mlp.swiglu_alpha * g));
          break;
        case model::ExpertActivation::kRelu2:
          act[f] = std::max(u, 0.0) * std::max(u, 0.0);
          break;
      }
    }
    out->assign(H, 0.0);
    for (int64_t h = 0; h < H; ++h) {
      double sum = bias(w.w->down_bias, h);
      for (int64_t f = 0; f < F; ++f) sum += static_cast<double>(w.down.values[h * F + f]) * act[f];
      (*out)[h] = sum;
    }
  };
  // Route every slice as the ranks do, then visit each chosen expert once
  // (an expert is dequantised once, not once per token).
  std::vector<int32_t> idx(T * k);
  std::vector<float> w(T * k);
  int64_t first = 0;
  for (int64_t count : slice_tokens) {
    count = std::min(count, T - first);
    if (count <= 0) break;
    Tensor slice({count, H});
    if (count > 0) std::memcpy(slice.data(), x.row(first), count * H * sizeof(float));
    std::vector<int32_t> slice_idx;
    std::vector<float> slice_w;
    MOEX_RETURN_IF_ERROR(RouteTokens(spec, weights, slice,
                                     token_ids.empty() ? token_ids : token_ids.subspan(first, count), &slice_idx,
                                     &slice_w));
    std::copy(slice_idx.begin(), slice_idx.end(), idx.begin() + first * k);
    std::copy(slice_w.begin(), slice_w.end(), w.begin() + first * k);
    first += count;
  }
  std::map<int64_t, std::vector<std::pair<int64_t, double>>> by_expert;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) by_expert[idx[t * k + j]].emplace_back(t, w[t * k + j]);
  }
  // What the routed experts see: the rows, or their fp8 read-back.
  Tensor read_back;
  if (dtype == DispatchDtype::kFp8 && T > 0) {
    const int64_t blocks = kernels::Fp8RowScales(H);
    std::vector<uint8_t> q(T * H);
    std::vector<float> scales(T * blocks);
    kernels::QuantizeRowsFp8(x.data(), T, H, q.data(), scales.data());
    read_back = Tensor({T, H});
    for (int64_t t = 0; t < T; ++t) kernels::DequantizeRowFp8(&q[t * H], &scales[t * blocks], H, read_back.row(t));
  }
  const Tensor& routed = dtype == DispatchDtype::kFp8 && T > 0 ? read_back : x;
  std::vector<double> acc(T * H, 0.0), out;
  for (const auto& [e, pairs] : by_expert) {
    const Dense expert = dense(weights.experts.at(e));
    for (const auto& [t, weight] : pairs) {
      const bool on_input = spec.router.weight_on_input;
      ffn(expert, spec.mlp, routed.row(t), on_input ? weight : 1.0, &out);
      for (int64_t h = 0; h < H; ++h) acc[t * H + h] += (on_input ? 1.0 : weight) * out[h];
    }
  }
  if (weights.shared) {
    const Dense shared = dense(*weights.shared);
    for (int64_t t = 0; t < T; ++t) {
      ffn(shared, spec.shared_mlp, x.row(t), 1.0, &out);
      double gate = 1.0;
      if (!weights.shared_gate.values.empty()) {
        double dot = 0;
        for (int64_t h = 0; h < H; ++h) dot += static_cast<double>(x.row(t)[h]) * weights.shared_gate.values[h];
        gate = 1.0 / (1.0 + std::exp(-dot));
      }
      for (int64_t h = 0; h < H; ++h) acc[t * H + h] += gate * out[h];
    }
  }
  Tensor y({x.dim(0), H});  // rows past the slices stay zero
  for (int64_t i = 0; i < T * H; ++i) y.values[i] = static_cast<float>(acc[i]);
  return y;
}

}  // namespace moex::ep
