"""TTFT per request for every system, as a small PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from segcache.bench.runner import SystemResult  # noqa: E402


def ttft_chart(results: list[SystemResult], path: Path, title: str) -> Path:
    """One line per system; x is the request in schedule order, labelled agent/turn."""
    figure, axes = plt.subplots(figsize=(9, 4.2), dpi=100)
    for result in results:
        axes.plot([r.index for r in result.requests], [r.ttft_s for r in result.requests],
                  marker="o", markersize=4, linewidth=1.5, label=result.name)
    first = results[0].requests
    axes.set_xticks([r.index for r in first], [f"a{r.agent_id}t{r.turn}" for r in first], fontsize=8)
    axes.set_xlabel("request (agent, turn) in arrival order")
    axes.set_ylabel("time to first token (s)")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
