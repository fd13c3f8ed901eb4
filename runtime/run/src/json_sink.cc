#include <cstdio>
#include <fstream>

#include "moex/core/provenance.h"
#include "moex/core/str_cat.h"
#include "moex/ep/dispatch.h"
#include "moex/run/sink.h"

namespace moex::run {

void JsonSink::OnStart(const RunHeader& h) {
  head_ = nlohmann::json::object();
  head_["provenance"] = ProvenanceJson({h.world_size, h.transport, h.device_path});
  head_["model"] = h.config->model;
  head_["layer"] = h.spec->layer;
  head_["world_size"] = h.world_size;
  head_["transport"] = h.transport;
  head_["tokens_per_step"] = h.tokens_per_step;
  head_["hidden"] = h.spec->hidden;
  head_["top_k"] = h.spec->top_k;
  head_["routing_skew"] = h.config->routing_skew;
  head_["layer_total_params"] = h.spec->total_params();
  head_["layer_active_params"] = h.spec->active_params();
  head_["dispatch_path_reason"] = h.data_path_reason;
  // How rows cross between hosts, and the bytes one takes there.
  head_["dispatch_dtype"] = h.config->dispatch_dtype;
  if (absl::StatusOr<ep::DispatchDtype> dtype = ep::ParseDispatchDtype(h.config->dispatch_dtype); dtype.ok()) {
    head_["wire_row_bytes"] = ep::WireRowBytes(*dtype, h.spec->hidden);
  }
  // Rank 0's BLAS threads and the CPUs it was bound to (0: unknown, or
  // the GPU path), and what is wrong with them.
  head_["blas_threads"] = h.blas.threads;
  head_["cpus_bound"] = h.blas.cpus_bound;
  head_["warnings"] = nlohmann::json::array();
  if (h.blas.oversubscribed()) head_["warnings"].push_back(h.blas.Warning());
  check_ = h.config->check;
}

absl::Status JsonSink::OnFinish(const RunResult& r) {
  nlohmann::json j = head_;
  j["dispatch_path"] = r.data_path;
  j["steps"] = nlohmann::json::array();
  for (const StepSummary& s : *r.progress.steps) j["steps"].push_back(ToJson(s));
  const Medians m = MeasuredMedians(*r.progress.steps);
  j["summary"] = {{"tokens_per_second", m.rate}, {"dispatch_seconds", m.dispatch},
                  {"combine_seconds", m.combine}, {"imbalance", m.imbalance},
                  {"hosts", r.hosts}, {"internode_bytes_per_step", m.internode_bytes},
                  {"internode_floor_bytes_per_step", m.internode_floor_bytes},
                  {"combine_internode_bytes_per_step", m.combine_internode_bytes}};
  j["memory"] = {{"expert_dtype", r.expert_dtype},
                 {"experts_mapped", r.experts_mapped},
                 {"expert_bytes_per_rank", r.expert_bytes_per_rank},
                 {"peak_resident_bytes_per_rank", r.peak_resident_bytes_per_rank}};
  if (check_) j["check_relative_error"] = r.progress.check_error;
  j["rebalances"] = nlohmann::json::array();
  for (const balance::RebalanceEvent& e : r.rebalances) {
    j["rebalances"].push_back({{"version", e.version}, {"reason", e.reason}, {"decided_before_step", e.decided_step},
                               {"live_from_step", e.live_step}, {"window_imbalance_before", e.imbalance_before},
                               {"window_imbalance_after", e.imbalance_after}, {"experts_moved", e.experts_moved},
                               {"bytes", e.bytes}, {"chunks", e.chunks}, {"migration_seconds", e.seconds}});
  }
  // Written beside, then renamed: a reader never sees half a file.
  const std::string temporary = StrCat(path_, ".tmp");
  {
    std::ofstream out(temporary);
    out << j.dump(2) << "\n";
    if (!out) return absl::PermissionDeniedError(StrCat("cannot write '", path_, "'"));
  }
  if (std::rename(temporary.c_str(), path_.c_str()) != 0) {
    return absl::PermissionDeniedError(StrCat("cannot write '", path_, "'"));
  }
  return absl::OkStatus();
}

}  // namespace moex::run
