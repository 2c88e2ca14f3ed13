"""The analysis as a table for people and as JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from segcache.trace.metrics import Analysis


@dataclass(frozen=True)
class TraceReport:
    """A trace's figures: the unlimited pool, a sweep of LRU pool sizes, and what the server reported."""

    shapes: tuple[str, ...]
    unlimited: Analysis
    sweep: tuple[Analysis, ...]  # ascending pool sizes; empty when none were asked for
    served_cached_tokens: int | None  # sum over requests when the trace recorded it (segcache log)


def to_json_rows(reports: Sequence[TraceReport]) -> list[dict]:
    return [_row(report) for report in reports]


def _row(report: TraceReport) -> dict:
    a = report.unlimited
    row = {"trace": a.name, "shapes": list(report.shapes), "requests": len(a.requests),
           "input_tokens": a.input_tokens, **_rates(a),
           "prefix_hit_tokens": a.hit_tokens("prefix"), "substring_hit_tokens": a.hit_tokens("substring"),
           "tree_hit_tokens": a.hit_tokens("tree"), "served_cached_tokens": report.served_cached_tokens,
           "pool_sweep": [{"pool_tokens": s.pool_tokens, **_rates(s)} for s in report.sweep]}
    return row


def _rates(a: Analysis) -> dict:
    return {"prefix_hit_rate": a.hit_rate("prefix"), "substring_hit_rate": a.hit_rate("substring"),
            "tree_hit_rate": a.hit_rate("tree")}


def render_json(reports: Sequence[TraceReport]) -> str:
    return json.dumps(to_json_rows(reports), indent=2)


def render_table(reports: Sequence[TraceReport]) -> str:
    """Per trace: requests, input tokens, prefix %, substring %, tree %, gap (substring - prefix, points)."""
    header = ("trace", "requests", "input tokens", "prefix", "substring", "tree", "gap")
    rows = [(r.unlimited.name, f"{len(r.unlimited.requests):,}", f"{r.unlimited.input_tokens:,}",
             *_percentages(r.unlimited),
             f"{100 * (r.unlimited.hit_rate('substring') - r.unlimited.hit_rate('prefix')):.1f} pp")
            for r in reports]
    lines = _columns(header, rows)
    served = [r for r in reports if r.served_cached_tokens is not None]
    if served:
        lines += ["", "served by segcache (recorded in the trace):"]
        lines += [f"  {r.unlimited.name}: {r.served_cached_tokens:,} cached tokens = "
                  f"{100 * r.served_cached_tokens / max(r.unlimited.input_tokens, 1):.1f}%" for r in served]
    sweeps = [(r.unlimited.name, s) for r in reports for s in r.sweep]
    if sweeps:
        lines += ["", "LRU pool sweep:"]
        lines += _columns(("trace", "pool tokens", "prefix", "substring", "tree"),
                          [(name, f"{s.pool_tokens:,}", *_percentages(s)) for name, s in sweeps])
    return "\n".join(lines)


def _percentages(a: Analysis) -> tuple[str, str, str]:
    return tuple(f"{100 * a.hit_rate(m):.1f}%" for m in ("prefix", "substring", "tree"))  # type: ignore[return-value]


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    def line(cells: Sequence[str]) -> str:
        first = f"{cells[0]:<{widths[0]}}"
        return "  ".join([first, *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:]))]).rstrip()
    return [line(header), *(line(row) for row in rows)]
