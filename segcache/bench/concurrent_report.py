"""Figures of a concurrent run: aggregate output tokens/s, TTFT and latency percentiles, wall, peak RSS.

With several rounds (each system once per round, in turn), the table shows each system's median-wall run
and the ratios are medians of the ratios within each round: on a machine whose speed drifts, two runs
taken a minute apart compare better than two medians taken over the whole bench.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

_MIB = 1 << 20


@dataclass(frozen=True)
class Timed:
    ttft_s: float
    latency_s: float
    completion_tokens: int


@dataclass(frozen=True)
class ConcurrentRun:
    system: str
    num_clients: int
    wall_s: float
    peak_rss_bytes: int
    requests: tuple[Timed, ...]
    decode_work: tuple[float, float] | None = None   # segcache's own (rows, seconds) of decode forwards
    round: int = 0
    decode_steps: float | None = None                # segcache's decode steps (rows / steps: the mean batch)

    @property
    def tokens_per_s(self) -> float:
        return sum(r.completion_tokens for r in self.requests) / self.wall_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second of decode forward: the decode throughput, prefill and waiting left out."""
        if self.decode_work is None or not self.decode_work[1]:
            return None
        return self.decode_work[0] / self.decode_work[1]

    @property
    def rows_per_step(self) -> float | None:
        """Sequences per decode step, on average: how full the batches were (with batching off, how many
        streams each step advanced one after another)."""
        if self.decode_work is None or not self.decode_steps:
            return None
        return self.decode_work[0] / self.decode_steps

    def ttft(self, percentile: float) -> float:
        return float(np.percentile([r.ttft_s for r in self.requests], percentile))

    def latency(self, percentile: float) -> float:
        return float(np.percentile([r.latency_s for r in self.requests], percentile))


def one_line(run: ConcurrentRun) -> str:
    return (f"{len(run.requests)} requests in {run.wall_s:.1f} s, {run.tokens_per_s:.1f} output tok/s, "
            f"TTFT p50 {run.ttft(50):.2f} s, latency p50 {run.latency(50):.2f} s")


def table(runs: list[ConcurrentRun]) -> str:
    """A row per system and client count: its median-wall run, the wall's range over rounds beside it."""
    lines = ["| system | clients | requests | wall s | output tok/s | decode tok/s | decode rows/step | TTFT p50 s "
             "| TTFT p90 s | latency p50 s | latency p99 s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group in _groups(runs).values():
        r = _median_run(group)
        walls = [g.wall_s for g in group]
        wall = f"{r.wall_s:.1f}" + (f" ({min(walls):.1f}-{max(walls):.1f})" if len(group) > 1 else "")
        decode = f"{r.decode_tokens_per_s:.1f}" if r.decode_tokens_per_s is not None else "-"
        per_step = f"{r.rows_per_step:.1f}" if r.rows_per_step is not None else "-"
        lines.append(f"| {r.system} | {r.num_clients} | {len(r.requests)} | {wall} | {r.tokens_per_s:.1f} "
                     f"| {decode} | {per_step} "
                     f"| {r.ttft(50):.2f} | {r.ttft(90):.2f} | {r.latency(50):.2f} | {r.latency(99):.2f} "
                     f"| {r.peak_rss_bytes / _MIB:.0f} |")
    return "\n".join(lines)


def ratios(runs: list[ConcurrentRun], batched: str, off: str) -> list[str]:
    """Batched vs off at each client count both ran: throughput, wall time and TTFT p50, each the median of
    the ratios within a round."""
    by_key = {(r.system, r.num_clients, r.round): r for r in runs}
    lines = []
    for clients in sorted({r.num_clients for r in runs}):
        pairs = [(ours, by_key[(off, clients, ours.round)]) for ours in runs
                 if ours.system == batched and ours.num_clients == clients and (off, clients, ours.round) in by_key]
        if not pairs:
            continue

        def ratio(figure) -> float:
            return statistics.median(figure(a) / figure(b) for a, b in pairs)

        decode = ""
        if all(a.decode_tokens_per_s and b.decode_tokens_per_s for a, b in pairs):
            decode = f"decode tok/s {ratio(lambda r: r.decode_tokens_per_s):.2f}x; "
        rounds = f" (median of {len(pairs)} rounds)" if len(pairs) > 1 else ""
        lines.append(f"- {clients} clients: output tok/s {ratio(lambda r: r.tokens_per_s):.2f}x of "
                     f"{_label(off)}; {decode}wall {ratio(lambda r: r.wall_s):.2f}x; TTFT p50 "
                     f"{ratio(lambda r: r.ttft(50)):.2f}x; latency p50 {ratio(lambda r: r.latency(50)):.2f}x{rounds}")
    return lines


def _groups(runs: list[ConcurrentRun]) -> dict[tuple[str, int], list[ConcurrentRun]]:
    groups: dict[tuple[str, int], list[ConcurrentRun]] = {}
    for r in runs:
        groups.setdefault((r.system, r.num_clients), []).append(r)
    return groups


def _median_run(group: list[ConcurrentRun]) -> ConcurrentRun:
    """The run of median wall time (the lower one of an even count)."""
    return sorted(group, key=lambda r: r.wall_s)[(len(group) - 1) // 2]


def _label(system: str) -> str:
    return "`--batching off`" if system == "segcache-batching-off" else system
