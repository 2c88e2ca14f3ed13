"""One PNG per trace: cumulative hit rate per request, and hit rate against LRU pool size.

Drawn on a matplotlib Figure with the Agg canvas directly, so no global backend or pyplot state.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from segcache.trace.metrics import METRICS
from segcache.trace.report import TraceReport

_COLORS = {"prefix": "#2b8a3e", "substring": "#e8590c", "tree": "#1864ab"}


def render_png(report: TraceReport) -> bytes:
    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    steps, sweep = figure.subplots(1, 2)
    a = report.unlimited
    for metric in METRICS:
        steps.plot(range(1, len(a.requests) + 1), 100 * a.cumulative_rate(metric), label=metric,
                   color=_COLORS[metric])
    steps.set(title=f"{a.name}: cumulative hit rate", xlabel="request", ylabel="hit rate (% of input tokens)",
              ylim=(0, 100))
    steps.legend(loc="lower right")
    if report.sweep:
        sizes = [s.pool_tokens for s in report.sweep]
        for metric in METRICS:
            sweep.plot(sizes, [100 * s.hit_rate(metric) for s in report.sweep], marker="o", label=metric,
                       color=_COLORS[metric])
            sweep.axhline(100 * a.hit_rate(metric), color=_COLORS[metric], linestyle=":", linewidth=1)
        sweep.set_xscale("log")
        sweep.legend(loc="lower right")
    else:
        sweep.text(0.5, 0.5, "no pool sizes given (--pool-tokens)", ha="center", va="center")
    sweep.set(title="LRU pool sweep (dotted: unlimited)", xlabel="pool size (tokens)", ylabel="hit rate (%)",
              ylim=(0, 100))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_png(report: TraceReport, path: Path) -> Path:
    path.write_bytes(render_png(report))
    return path
