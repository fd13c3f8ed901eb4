#include "moex/bench/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "absl/strings/str_format.h"

namespace moex::bench {
namespace {

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

// About five round ticks over [lo, hi].
std::vector<double> NiceTicks(double lo, double hi) {
  double span = hi - lo;
  if (!(span > 0)) return {lo};
  double step = std::pow(10.0, std::floor(std::log10(span / 5)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (span / (step * m) <= 6) {
      step *= m;
      break;
    }
  }
  std::vector<double> ticks;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) ticks.push_back(v);
  return ticks;
}

std::string Label(double v) {
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-2)) return absl::StrFormat("%.1e", v);
  if (std::fabs(v - std::round(v)) < 1e-9) return absl::StrFormat("%.0f", v);
  return absl::StrFormat("%.2g", v);
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

}  // namespace

std::string RenderSvg(const Chart& chart) {
  // The legend goes under the plot, a line per series: labels can be long.
  const double width = 760, left = 80, right = 30, top = 40, bottom = 60;
  const double height = 440 + 18.0 * static_cast<double>(chart.series.size());
  const double plot_w = width - left - right, plot_h = 440 - top - bottom;
  double x_lo = 1e300, x_hi = -1e300, y_lo = 1e300, y_hi = -1e300;
  auto fx = [&](double x) { return chart.log2_x ? std::log2(std::max(x, 1e-9)) : x; };
  for (const Series& s : chart.series) {
    for (auto [x, y] : s.points) {
      x_lo = std::min(x_lo, fx(x)), x_hi = std::max(x_hi, fx(x));
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  }
  if (x_lo > x_hi) x_lo = 0, x_hi = 1, y_lo = 0, y_hi = 1;
  if (chart.y_from_zero) y_lo = std::min(0.0, y_lo);
  if (x_hi == x_lo) x_lo -= 1, x_hi += 1;
  if (y_hi == y_lo) y_hi = y_lo + 1;
  y_hi += 0.05 * (y_hi - y_lo);
  auto px = [&](double x) { return left + (fx(x) - x_lo) / (x_hi - x_lo) * plot_w; };
  auto py = [&](double y) { return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h; };

  std::ostringstream svg;
  svg << absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      width, height);
  svg << absl::StrFormat("<text x=\"%.0f\" y=\"22\" font-size=\"15\">%s</text>\n", left, Escape(chart.title));
  // Axes, grid and ticks.
  svg << absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n",
                         left, top, plot_w, plot_h);
  for (double y : NiceTicks(y_lo, y_hi)) {
    svg << absl::StrFormat("<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                           left, left + plot_w, py(y), py(y), left - 6, py(y) + 4, Label(y));
  }
  std::vector<double> xs;
  if (chart.log2_x) {
    for (double e = std::ceil(x_lo); e <= x_hi + 1e-9; e += 1) xs.push_back(std::exp2(e));
  } else {
    xs = NiceTicks(x_lo, x_hi);
  }
  for (double x : xs) {
    svg << absl::StrFormat("<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                           px(x), px(x), top, top + plot_h, px(x), top + plot_h + 18, Label(x));
  }
  svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", left + plot_w / 2,
                         top + plot_h + 38, Escape(chart.x_label));
  svg << absl::StrFormat("<text transform=\"translate(18,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
                         top + plot_h / 2, Escape(chart.y_label));
  // Series and legend.
  for (size_t i = 0; i < chart.series.size(); ++i) {
    const Series& s = chart.series[i];
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    std::string path;
    for (auto [x, y] : s.points) path += absl::StrFormat("%s%.1f,%.1f", path.empty() ? "" : " ", px(x), py(y));
    svg << absl::StrFormat("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n", color, path);
    for (auto [x, y] : s.points) {
      svg << absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s: %s, %s</title></circle>\n",
                             px(x), py(y), color, Escape(s.label), Label(x), Label(y));
    }
    double ly = top + plot_h + 64 + 18 * static_cast<double>(i);
    svg << absl::StrFormat("<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"/>"
                           "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                           left, left + 20, ly - 4, ly - 4, color, left + 26, ly, Escape(s.label));
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace moex::bench
