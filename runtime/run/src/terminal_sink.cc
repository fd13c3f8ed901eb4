#include <iostream>

#include "absl/strings/str_format.h"
#include "moex/core/format.h"
#include "moex/core/str_cat.h"
#include "moex/core/tensor.h"
#include "moex/ep/dispatch.h"
#include "moex/run/sink.h"

namespace moex::run {

void TerminalSink::OnStart(const RunHeader& h) {
  steps_ = h.config->steps;
  rebalancing_ = h.rebalancing;
  gpu_ = !h.device_path.empty();
  hidden_ = h.spec->hidden;
  fp8_dispatch_ = h.config->dispatch_dtype == "fp8";
  if (h.blas.oversubscribed()) std::cerr << "moex run: warning: " << h.blas.Warning() << "\n" << std::flush;
  if (quiet_) return;
  const model::MoeLayerSpec& spec = *h.spec;
  const placement::Placement& p = *h.placement;
  if (gpu_) std::cout << "moex run: device buffers over " << h.device_path << "\n";
  std::cout << absl::StrFormat(
      "moex run: %s layer %d on %d rank%s over %s: %d experts (top-%d, width %d%s), hidden %d, "
      "%d slots (%d per rank%s)\n",
      h.model_source, spec.layer, h.world_size, h.world_size == 1 ? "" : "s", h.transport, spec.num_experts,
      spec.top_k, spec.expert_width, spec.shared_width > 0 ? StrCat(", shared ", spec.shared_width) : "", spec.hidden,
      p.num_slots(), p.num_local_slots(0),
      p.num_slots() > p.num_experts() ? StrCat(", ", p.num_slots() - p.num_experts(), " replicas") : "");
  std::cout << absl::StrFormat(
      "layer parameters: %s total, %s active per token; %d tokens per step%s\n",
      FormatCount(static_cast<double>(spec.total_params())), FormatCount(static_cast<double>(spec.active_params())),
      h.tokens_per_step,
      h.config->input.empty() ? absl::StrFormat(" (synthetic, routing skew %.2f)", h.config->routing_skew)
                              : StrCat(" from ", h.config->input));
  std::cout << h.weights_line;
  if (!h.data_path_reason.empty()) std::cout << "moex run: tokens move over " << h.data_path_reason << "\n";
  if (h.config->dispatch_dtype == "fp8") {
    const int64_t H = spec.hidden, row = ep::WireRowBytes(ep::DispatchDtype::kFp8, H);
    std::cout << absl::StrFormat(
        "moex run: rows cross between hosts as fp8: %d bytes a row (%.3fx of bf16, %.3fx of fp32); the routed "
        "experts see every row as it reads back\n",
        row, static_cast<double>(row) / static_cast<double>(2 * H), static_cast<double>(row) / static_cast<double>(4 * H));
  }
  if (h.first_step > 0) {
    std::cout << "moex run: resuming after step " << h.first_step << " (done by an earlier attempt)\n";
  }
}

// Also with --quiet: placement changes are rare and matter.
void TerminalSink::OnRebalance(int64_t step, const balance::RebalanceEvent& e, bool live) {
  if (!live) {
    std::cout << absl::StrFormat(
        "rebalance before step %d: placement v%d (%s); window imbalance %.3f -> %.3f; moving %d expert%s "
        "(%s) in %d chunk%s\n",
        step + 1, e.version, e.reason, e.imbalance_before, e.imbalance_after, e.experts_moved,
        e.experts_moved == 1 ? "" : "s", FormatBytes(static_cast<double>(e.planned_bytes)), e.chunks,
        e.chunks == 1 ? "" : "s");
    return;
  }
  std::cout << absl::StrFormat("placement v%d live from step %d: %s migrated in %.2f ms\n", e.version,
                               e.live_step + 1, FormatBytes(static_cast<double>(e.bytes)), 1e3 * e.seconds);
}

void TerminalSink::OnStep(const StepSummary& s, const RunProgress&) {
  if (quiet_) return;
  std::cout << absl::StrFormat(
      "step %d/%d: %d tokens in %.2f ms (route %.2f, dispatch %.2f, experts %.2f, combine %.2f), "
      "%s sent, imbalance %.2f, %.0f tokens/s%s%s%s\n",
      s.step + 1, steps_, s.tokens, 1e3 * s.seconds, 1e3 * s.route, 1e3 * s.dispatch, 1e3 * s.experts,
      1e3 * s.combine, FormatBytes(static_cast<double>(s.bytes)), s.imbalance,
      s.seconds > 0 ? static_cast<double>(s.tokens) / s.seconds : 0.0,
      rebalancing_ ? absl::StrFormat(", placement v%d", s.placement_version) : "",
      s.migration.empty() ? "" : StrCat(", ", s.migration),
      s.check_error >= 0 ? absl::StrFormat(", check %.2g", s.check_error) : "");
}

void TerminalSink::OnOutputWritten(const std::string& path, const std::vector<int64_t>& shape) {
  std::cout << "wrote " << path << ": output " << ShapeString(shape) << " fp32\n";
}

void TerminalSink::OnCheck(double error, double bound) {
  std::cout << absl::StrFormat(
      "check: max |error| against a single-process computation, relative to the output's scale: %.3g "
      "(bound %.0e%s): %s\n",
      error, bound, gpu_ ? ", bf16" : "", error <= bound ? "PASS" : "FAIL");
}

absl::Status TerminalSink::OnFinish(const RunResult& r) {
  const std::vector<StepSummary>& steps = *r.progress.steps;
  if (steps.empty()) return absl::OkStatus();
  const Medians m = MeasuredMedians(steps);
  const StepSummary& last = steps.back();
  // The floor: each remote copy of a row once, at the size it travels
  // (fp8 where every copy goes by the transport; rows within a host
  // through shared memory stay fp32).
  const bool all_fp8 = fp8_dispatch_ && r.data_path == "all-to-all-v";
  const double row_bytes = all_fp8 ? static_cast<double>(ep::WireRowBytes(ep::DispatchDtype::kFp8, hidden_))
                                   : static_cast<double>(hidden_) * 4;
  const double floor = static_cast<double>(last.remote_copies) * row_bytes;
  std::cout << absl::StrFormat(
      "summary (median of %d step%s): %.0f tokens/s, dispatch %.2f ms, combine %.2f ms, "
      "imbalance %.2f; dispatch moved %s for a floor of %s (%.2fx: routing metadata) over %s%s\n",
      m.steps, m.steps == 1 ? "" : "s", m.rate, 1e3 * m.dispatch, 1e3 * m.combine, m.imbalance,
      FormatBytes(static_cast<double>(last.dispatch_bytes)), FormatBytes(floor),
      floor > 0 ? static_cast<double>(last.dispatch_bytes) / floor : 1.0, r.data_path,
      all_fp8 ? ", rows as fp8" : fp8_dispatch_ ? " (floor at fp32; rows between hosts as fp8)" : "");
  if (r.hosts > 1) {
    std::cout << absl::StrFormat(
        "across %d hosts (median per step): dispatch sent %s between hosts for a floor of %s (%.3fx), "
        "combine %s back\n",
        r.hosts, FormatBytes(m.internode_bytes), FormatBytes(m.internode_floor_bytes),
        m.internode_floor_bytes > 0 ? m.internode_bytes / m.internode_floor_bytes : 1.0,
        FormatBytes(m.combine_internode_bytes));
  }
  if (!r.peak_resident_bytes_per_rank.empty() && r.peak_resident_bytes_per_rank.size() == r.expert_bytes_per_rank.size()) {
    std::cout << "memory (by rank): experts held in " << r.expert_dtype << (r.experts_mapped ? " (mapped)" : "")
              << " / peak resident (VmHWM):";
    for (size_t i = 0; i < r.peak_resident_bytes_per_rank.size() && i < 16; ++i) {
      std::cout << " " << FormatBytes(static_cast<double>(r.expert_bytes_per_rank[i])) << " / "
                << FormatBytes(static_cast<double>(r.peak_resident_bytes_per_rank[i]))
                << (i + 1 < r.peak_resident_bytes_per_rank.size() ? "," : "");
    }
    if (r.peak_resident_bytes_per_rank.size() > 16) std::cout << " …";
    std::cout << "\n";
  }
  return absl::OkStatus();
}

}  // namespace moex::run
