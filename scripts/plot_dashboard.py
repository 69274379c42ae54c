"""Draws the dashboard's panels from the range queries tests/prometheus.rs saved: one subplot per panel, one
line per series, the x axis in seconds since the test's load began. Used by scripts/plot-dashboard."""

import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The panels drawn, in the dashboard's order; the rest (reconciler, workers serving) are flat in a short test.
PANELS = [
    "Ports used and free",
    "Started to ready",
    "Events by outcome",
    "Failed replies by reason",
    "Consumer lag",
    "Dead letters",
    "Apiserver call latency",
    "Apiserver errors",
]
# Labels that only say where a series came from.
NOISE = {"instance", "job", "resource_manager", "gateway"}


def legend(expr, metric):
    """A short name for one series: the metric's distinguishing labels, else the query's metric name."""
    labels = [f"{v}" for k, v in sorted(metric.items()) if k not in NOISE]
    name = expr.split("(itg_")[-1].split("{")[0] if "(itg_" in expr else expr
    quantile = expr.split("histogram_quantile(")[1].split(",")[0] if "histogram_quantile(" in expr else ""
    head = f"p{round(float(quantile) * 100)}" if quantile else name
    return " ".join([head] + labels)


def main(data_path, out_path):
    with open(data_path) as f:
        data = json.load(f)
    t0 = min(float(v[0]) for q in data for s in q["result"] for v in s["values"])
    fig, axes = plt.subplots(4, 2, figsize=(14, 14), constrained_layout=True)
    for ax, title in zip(axes.flat, PANELS):
        queries = [q for q in data if q["panel"] == title]
        for q in queries:
            for s in q["result"]:
                xs = [float(v[0]) - t0 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                if all(math.isnan(y) for y in ys):
                    continue
                ax.plot(xs, ys, label=legend(q["expr"], s["metric"]), linewidth=1.4)
        ax.set_title(title)
        ax.set_xlabel("seconds since the load began")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Internal Task Gateway: a worker under load, scraped by Prometheus (tests/prometheus.rs)")
    fig.savefig(out_path, dpi=80)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
