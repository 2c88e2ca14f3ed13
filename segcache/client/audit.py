"""Cache audit: one line per call saying what the cache did, and totals with cost.

    [cache] hit 97.6% read 17,345 new 428 segments 3/4

`read` are prompt tokens served from the cache, `new` the ones computed (and written to it), and
`segments` how many declared segments were fully cached. Users see at once which calls miss.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger("segcache.client.audit")


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens. Defaults: the brief's hosted-API list prices (cache read = 1/10)."""

    new: float = 5.00
    read: float = 0.50
    output: float = 15.00

    def cost(self, new_tokens: int, read_tokens: int, output_tokens: int) -> float:
        return (new_tokens * self.new + read_tokens * self.read + output_tokens * self.output) / 1e6


@dataclass(frozen=True)
class CallRecord:
    """What one call cost the cache, read from the response's usage."""

    model: str
    input_tokens: int
    read_tokens: int
    output_tokens: int
    segments_hit: int
    segments_total: int
    label: str | None = None
    resent: bool = False
    timestamp: float = field(default_factory=time.time)

    @property
    def new_tokens(self) -> int:
        return self.input_tokens - self.read_tokens

    @property
    def hit_ratio(self) -> float:
        return self.read_tokens / self.input_tokens if self.input_tokens else 0.0

    def line(self) -> str:
        text = (f"[cache] hit {100 * self.hit_ratio:.1f}% read {self.read_tokens:,} "
                f"new {self.new_tokens:,} segments {self.segments_hit}/{self.segments_total}")
        return text + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class Totals:
    calls: int
    input_tokens: int
    read_tokens: int
    new_tokens: int
    output_tokens: int
    cost: float
    cost_uncached: float

    @property
    def hit_ratio(self) -> float:
        return self.read_tokens / self.input_tokens if self.input_tokens else 0.0


@dataclass(frozen=True)
class Summary:
    total: Totals
    by_label: dict[str, Totals]
    resends: int


def record_from_usage(model: str, usage: Mapping[str, Any], label: str | None = None,
                      resent: bool = False) -> CallRecord:
    """segcache's usage fields when present, else OpenAI's (`prompt_tokens_details.cached_tokens`)."""
    input_tokens = usage.get("input_tokens", usage.get("prompt_tokens")) or 0
    read = usage.get("cached_prefix_tokens")
    if read is None:
        read = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    receipts = usage.get("segments") or []
    hits = sum(1 for r in receipts if r.get("status") == "hit")
    output = usage.get("output_tokens", usage.get("completion_tokens")) or 0
    return CallRecord(model, int(input_tokens), int(read), int(output), hits, len(receipts), label, resent)


class CacheAudit:
    """Logs every call, optionally appends it to a JSONL file, and sums it up."""

    def __init__(self, jsonl_path: str | Path | None = None, prices: Prices = Prices(),
                 log: logging.Logger = logger) -> None:
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.prices = prices
        self.log = log
        self.records: list[CallRecord] = []

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        self.log.info(record.line())
        if self.jsonl_path:
            row = asdict(record) | {"new_tokens": record.new_tokens, "hit": round(record.hit_ratio, 4)}
            with self.jsonl_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def summary(self) -> Summary:
        labels = sorted({r.label for r in self.records if r.label is not None})
        return Summary(total=self._totals(self.records),
                       by_label={lb: self._totals([r for r in self.records if r.label == lb]) for lb in labels},
                       resends=sum(r.resent for r in self.records))

    def table(self) -> str:
        """The brief's cost table: per label, tokens and cost with and without the cache."""
        summary = self.summary()
        rows = [*summary.by_label.items(), ("total", summary.total)]
        lines = [f"{'agent':<12}{'calls':>6}{'input':>10}{'read':>10}{'new':>9}{'hit':>8}"
                 f"{'cached $':>11}{'uncached $':>12}"]
        for name, t in rows:
            lines.append(f"{name:<12}{t.calls:>6}{t.input_tokens:>10,}{t.read_tokens:>10,}{t.new_tokens:>9,}"
                         f"{100 * t.hit_ratio:>7.1f}%{t.cost:>11.4f}{t.cost_uncached:>12.4f}")
        return "\n".join(lines)

    def _totals(self, records: list[CallRecord]) -> Totals:
        new = sum(r.new_tokens for r in records)
        read = sum(r.read_tokens for r in records)
        output = sum(r.output_tokens for r in records)
        return Totals(calls=len(records), input_tokens=new + read, read_tokens=read, new_tokens=new,
                      output_tokens=output, cost=self.prices.cost(new, read, output),
                      cost_uncached=self.prices.cost(new + read, 0, output))
