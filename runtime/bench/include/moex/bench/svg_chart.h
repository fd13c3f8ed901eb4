// A line chart as a self-contained SVG file: series of (x, y) points, axes
// with ticks, a legend. Benchmarks plot with it; no plotting library needed.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace moex::bench {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // sorted by x
};

struct Chart {
  std::string title, x_label, y_label;
  bool log2_x = false;  // rank counts: 1, 2, 4, ...
  bool y_from_zero = true;
  std::vector<Series> series;
};

std::string RenderSvg(const Chart& chart);

}  // namespace moex::bench
