// Prometheus metrics (`--metrics-listen ADDR` on `moex serve` and on a
// `moex run`'s rank 0): text exposition at http://ADDR/metrics, served by
// prometheus-cpp. Figures are read when Prometheus scrapes, never kept twice:
// a job's come from its record (the same figures `moex job status` shows).
//
// Names follow Prometheus's conventions: base units (`_seconds`, `_bytes`),
// `_total` counters, and bounded labels: a job's figures are exposed while
// it is pending or running (at most the controller's --max-jobs at once),
// per expert for those jobs only. A job is labelled `job_id`, not `job`,
// which Prometheus sets to the scrape job's name (ours would be renamed
// `exported_job`). docs/metrics.md lists every metric.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/v1/job.pb.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace prometheus {
class Exposer;
}

namespace moex::cluster {

// Builds metric families: one per name, each metric added with its labels.
class FamilyBuilder {
 public:
  // The family `name` (made on first use, with `help` and `type`).
  prometheus::MetricFamily& Family(const std::string& name, const std::string& help, prometheus::MetricType type);
  void Gauge(const std::string& name, const std::string& help, std::vector<prometheus::ClientMetric::Label> labels,
             double value);
  void Counter(const std::string& name, const std::string& help,
               std::vector<prometheus::ClientMetric::Label> labels, double value);
  std::vector<prometheus::MetricFamily> Take();

 private:
  std::vector<prometheus::MetricFamily> families_;
  std::map<std::string, size_t> index_;
};

// Runs `build` on a thread of the default stack size and returns what it
// built. Collect() runs on CivetWeb's request threads, whose stacks Debian's
// build makes small: ASan's larger frames overflowed them (a controller
// killed by a scrape, seen in CI).
std::vector<prometheus::MetricFamily> BuildOnOwnStack(const std::function<std::vector<prometheus::MetricFamily>()>& build);

// What a job's figures add, beside its record.
struct JobExtras {
  std::map<int, double> heartbeat_age_seconds;  // by rank: since its last heartbeat
};

// The per-job families of `job` (moex_job_*, moex_expert_tokens). `layer`
// labels its per-expert tokens: the spec's layer, else "first" (the model's
// first MoE layer).
void AddJobFamilies(const moex::v1::Job& job, const JobExtras& extras, FamilyBuilder& out);

// This process's resident memory, CPU seconds and open descriptors
// (process_*), read from /proc/self; absent where it cannot be read.
void AddProcessFamilies(FamilyBuilder& out);

// Serves `collectable` at http://`listen`/metrics until destroyed. `listen`
// is HOST:PORT (port 0: a free one, see port()); refused with a message
// naming `flag` when it is malformed or the address cannot be bound.
class MetricsEndpoint {
 public:
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& listen, const std::string& flag,
                                                                 std::shared_ptr<prometheus::Collectable> collectable);
  ~MetricsEndpoint();
  int port() const { return port_; }
  // HOST:PORT as it listens (the port it really got).
  const std::string& address() const { return address_; }

 private:
  MetricsEndpoint() = default;
  std::shared_ptr<prometheus::Collectable> collectable_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  std::string address_;
};

}  // namespace moex::cluster
