"""`segcache analyze`: read traces, tokenize them once, compute the three metrics, write the outputs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segcache.trace import html, plot
from segcache.trace.metrics import analyze
from segcache.trace.readers import read_trace
from segcache.trace.records import Trace
from segcache.trace.report import TraceReport
from segcache.trace.tokens import TokenizedRequest, Tokenizer, tokenize_trace
from segcache.trace.tree_metric import DEFAULT_BLOCK_TOKENS

_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class AnalyzedTrace:
    trace: Trace
    tokenized: list[TokenizedRequest]
    report: TraceReport


def parse_pool_sizes(text: str) -> list[int]:
    """'8k,32k,1m' -> [8000, 32000, 1000000] tokens."""
    sizes = []
    for item in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmM]?)", item)
        if not match:
            raise ValueError(f"cannot read {item!r} as a pool size: use tokens like 32000, 32k or 1m")
        sizes.append(int(float(match.group(1)) * _UNITS[match.group(2).lower()]))
    return sorted(set(sizes))


def default_pool_sizes(tokenized: Sequence[TokenizedRequest]) -> list[int]:
    """A ladder around the longest request: from a quarter of one request to four of them."""
    longest = max((len(r.input_ids) + len(r.output_ids) for r in tokenized), default=0)
    return sorted({size for size in (longest // 4, longest // 2, longest, 2 * longest, 4 * longest) if size > 0})


def analyze_trace(path: str | Path, tokenizer: Tokenizer, pool_sizes: Sequence[int] | None = (),
                  block_tokens: int = DEFAULT_BLOCK_TOKENS) -> AnalyzedTrace:
    """The unlimited pool, then an LRU sweep over `pool_sizes` (None: the default ladder; empty: no sweep);
    the tree metric cuts parts into blocks of `block_tokens` like a server started with that --block-tokens."""
    trace = read_trace(path)
    tokenized = tokenize_trace(trace, tokenizer)
    sizes = default_pool_sizes(tokenized) if pool_sizes is None else pool_sizes
    served = [r.served_cached_tokens for r in trace.requests]
    report = TraceReport(
        shapes=trace.shapes, unlimited=analyze(trace, tokenized, block_tokens=block_tokens),
        sweep=tuple(analyze(trace, tokenized, size, block_tokens) for size in sizes),
        served_cached_tokens=sum(served) if all(s is not None for s in served) else None)  # type: ignore[arg-type]
    return AnalyzedTrace(trace, tokenized, report)


def write_outputs(analyzed: Sequence[AnalyzedTrace], out_dir: Path) -> list[Path]:
    """<trace>.png per trace and one report.html holding them all; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, sections = [], []
    for item in analyzed:
        png = plot.render_png(item.report)
        path = out_dir / f"{Path(item.trace.name).stem}.png"
        path.write_bytes(png)
        written.append(path)
        sections.append(html.TraceSection(item.trace, item.tokenized, item.report, png))
    report = out_dir / "report.html"
    report.write_text(html.render_html(sections), encoding="utf-8")
    return [*written, report]
