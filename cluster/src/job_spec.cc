#include "moex/cluster/job_spec.h"

namespace moex::cluster {

job::RunConfig RunConfigFromSpec(const moex::v1::JobSpec& spec) {
  job::RunConfig config;
  config.model = spec.model();
  if (spec.has_layer()) config.layer = spec.layer();
  config.weights = spec.weights();
  config.steps = spec.steps();
  config.tokens_per_rank = spec.tokens_per_rank();
  if (!spec.transport().empty()) config.transport = spec.transport();
  if (!spec.device().empty()) config.device = spec.device();
  if (!spec.dispatch().empty()) config.dispatch = spec.dispatch();
  if (!spec.dispatch_dtype().empty()) config.dispatch_dtype = spec.dispatch_dtype();
  if (!spec.weight_dtype().empty()) config.weight_dtype = spec.weight_dtype();
  config.map_weights = !spec.copy_weights();
  config.routing_skew = spec.routing_skew();
  config.seed = spec.seed();
  config.redundant_experts = spec.redundant_experts();
  config.check = spec.check();
  if (spec.exchange_timeout_seconds() != 0) config.timeout_seconds = spec.exchange_timeout_seconds();
  const moex::v1::RebalanceSpec& r = spec.rebalance();
  if (!r.policy().empty()) config.rebalance.policy = r.policy();
  config.rebalance.threshold = r.threshold();
  if (r.interval() != 0) config.rebalance.interval = r.interval();
  if (r.window() != 0) config.rebalance.window = r.window();
  return config;
}

}  // namespace moex::cluster
