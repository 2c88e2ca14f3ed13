"""Figures of a concurrent run: aggregate output tokens/s, TTFT and latency percentiles, wall, peak RSS."""

from __future__ import annotations

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

    @property
    def tokens_per_s(self) -> float:
        return sum(r.completion_tokens for r in self.requests) / self.wall_s

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second of decode forward: the decode throughput, prefill and waiting left out."""
        if self.decode_work is None or not self.decode_work[1]:
            return None
        return self.decode_work[0] / self.decode_work[1]

    def ttft(self, percentile: float) -> float:
        return float(np.percentile([r.ttft_s for r in self.requests], percentile))

    def latency(self, percentile: float) -> float:
        return float(np.percentile([r.latency_s for r in self.requests], percentile))


def one_line(run: ConcurrentRun) -> str:
    return (f"{len(run.requests)} requests in {run.wall_s:.1f} s, {run.tokens_per_s:.1f} output tok/s, "
            f"TTFT p50 {run.ttft(50):.2f} s, latency p50 {run.latency(50):.2f} s")


def table(runs: list[ConcurrentRun]) -> str:
    lines = ["| system | clients | requests | wall s | output tok/s | decode tok/s | TTFT p50 s | TTFT p90 s "
             "| latency p50 s | latency p99 s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        decode = f"{r.decode_tokens_per_s:.1f}" if r.decode_tokens_per_s is not None else "-"
        lines.append(f"| {r.system} | {r.num_clients} | {len(r.requests)} | {r.wall_s:.1f} | {r.tokens_per_s:.1f} "
                     f"| {decode} "
                     f"| {r.ttft(50):.2f} | {r.ttft(90):.2f} | {r.latency(50):.2f} | {r.latency(99):.2f} "
                     f"| {r.peak_rss_bytes / _MIB:.0f} |")
    return "\n".join(lines)


def ratios(runs: list[ConcurrentRun], batched: str, off: str) -> list[str]:
    """Batched vs off at each client count both ran: throughput, wall time and TTFT p50."""
    by_key = {(r.system, r.num_clients): r for r in runs}
    lines = []
    for (system, clients), ours in sorted(by_key.items(), key=lambda item: item[0][1]):
        other = by_key.get((off, clients))
        if system != batched or other is None:
            continue
        decode = ""
        if ours.decode_tokens_per_s and other.decode_tokens_per_s:
            decode = f"decode tok/s {ours.decode_tokens_per_s / other.decode_tokens_per_s:.2f}x; "
        lines.append(f"- {clients} clients: output tok/s {ours.tokens_per_s / other.tokens_per_s:.2f}x of "
                     f"{_label(off)}; {decode}wall {ours.wall_s / other.wall_s:.2f}x; TTFT p50 "
                     f"{ours.ttft(50) / other.ttft(50):.2f}x; latency p50 {ours.latency(50) / other.latency(50):.2f}x")
    return lines


def _label(system: str) -> str:
    return "`--batching off`" if system == "segcache-batching-off" else system
