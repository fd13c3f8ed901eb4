// Calibrating the performance model (`moex plan --perf`) on what `moex bench`
// measured, and checking it: fit the link and compute figures on some
// points, predict the others with the model itself, report the error.
//
//   link:    dispatch_us and combine_us = latency + bytes x imbalance / bandwidth
//            (least squares over the fit points with more than one rank)
//   experts: expert_us = routed FLOPs of the hottest rank / rate
//            (least squares through the origin over the fit points with the layer)
//   memory:  a timed copy of 256 MiB on this machine (MeasureCopyGbps)
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "moex/bench/bench.h"
#include "moex/plan/perf_model.h"
#include "nlohmann/json.hpp"

namespace moex::bench {

struct CalibrationOptions {
  // A result calibrates when its rank count is in fit_ranks (empty: any) and
  // its tokens per rank in fit_tokens (empty: any); the rest are predicted.
  std::vector<int64_t> fit_ranks;
  std::vector<int64_t> fit_tokens;
  // Only results at these rank counts take part (empty: all). Ranks that
  // share one host's cores do not each get a GPU's worth of compute and
  // copy bandwidth, as the model assumes: calibrate one rank count at a
  // time there.
  std::vector<int64_t> only_ranks;
  double copy_gbps = 0;  // this machine's memory bandwidth; 0: not known
  std::string name = "calibrated";
};

struct Prediction {
  BenchPoint point;
  double dispatch_us = 0, combine_us = 0, expert_us = 0, layer_us = 0;              // measured
  double dispatch_model_us = 0, combine_model_us = 0, expert_model_us = 0, layer_model_us = 0;
};

struct Calibration {
  plan::ClusterProfile profile;
  int64_t fit_points = 0;
  std::vector<Prediction> held_out;
  // Mean absolute relative error over the held-out points (0..1); -1 where
  // no held-out point has the figure.
  double dispatch_error = -1, combine_error = -1, expert_error = -1, layer_error = -1;
};

absl::StatusOr<Calibration> Calibrate(const std::vector<BenchResult>& results, const CalibrationOptions& options);

// The internode term of `moex plan --perf` (nic_gbps, nic_latency_us), fitted
// on the points whose ranks spanned hosts (results with the hierarchical path
// measured), and checked on the others:
//   fit:     hierarchical dispatch + combine = 2 x latency + the bytes that
//            crossed between hosts x imbalance / bandwidth (least squares
//            over the fit points); ranks per host from the points
//   predict: the plan model itself (its own fan-out sample of how many hosts
//            a token reaches, hence its own bytes) with that profile, for
//            each held-out point; the error is against the measured
//            hierarchical time.
// The model counts network time only where the network is the slow link
// (as across GPU nodes): calibrate on a shaped link. The profile's other
// figures are the base's (e.g. a one-host Calibrate's, or H100's).
struct InternodeCalibration {
  plan::ClusterProfile profile;
  int64_t fit_points = 0;
  struct Point {
    BenchPoint point;
    int hosts = 0;
    double measured_us = 0, model_us = 0, internode_bytes = 0, model_internode_bytes = 0;
  };
  std::vector<Point> held_out;
  double error = -1;  // mean absolute relative error over the held-out points; -1: none
};
absl::StatusOr<InternodeCalibration> CalibrateInternode(const std::vector<BenchResult>& results,
                                                        const CalibrationOptions& options,
                                                        const plan::ClusterProfile& base);
nlohmann::json InternodeCalibrationJson(const InternodeCalibration& calibration);

// The profile as a file `moex plan --perf --cluster FILE.json` reads.
nlohmann::json ProfileJson(const plan::ClusterProfile& profile);
nlohmann::json CalibrationJson(const Calibration& calibration);

// GB/s of a memcpy of 256 MiB, best of 5.
double MeasureCopyGbps();

}  // namespace moex::bench
