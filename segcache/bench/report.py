"""Figures per system, the comparison table, the ratios and the JSON the issue asks for.

    TTFT median after first   median time to first token over every request but the cold first one
    TTFT p90                  over all requests
    TTFT sum                  the whole workload's time to first tokens: its total prefill time
    computed / reused         prompt tokens, from each server's own account (see usage.py)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from segcache.bench.runner import SystemResult

_MIB = 1 << 20
# Within this many tokens (or 2 %) a reported reuse agrees with the structure's prediction: servers
# place the seams between segments (separators, the end of the system turn) a token or two apart.
_AGREE_TOKENS = 8


@dataclass(frozen=True)
class SystemSummary:
    name: str
    num_requests: int
    ttft_median_after_first_s: float
    ttft_p90_s: float
    ttft_sum_s: float
    prefill_tokens_computed: int
    prefill_tokens_reused: int
    expected_reused: int
    reuse_sources: tuple[str, ...]
    total_s: float
    decode_tokens_per_s: float
    peak_rss_bytes: int
    held_tokens: int
    kv_bytes: int | None

    @property
    def reuse_agrees(self) -> bool:
        gap = abs(self.prefill_tokens_reused - self.expected_reused)
        return gap <= max(_AGREE_TOKENS * self.num_requests, 0.02 * self.expected_reused)


@dataclass(frozen=True)
class Floor:
    warm_ttft_s: float | None  # segcache's median TTFT after the first request
    floor_s: float | None      # median engine-only prefill of the same requests' new tokens


def summarize(result: SystemResult) -> SystemSummary:
    requests = result.requests
    ttfts = [r.ttft_s for r in requests]
    decoded = [r for r in requests if r.completion_tokens > 1 and r.decode_s > 0]
    decode_rate = (sum(r.completion_tokens - 1 for r in decoded) / sum(r.decode_s for r in decoded)
                   if decoded else 0.0)
    return SystemSummary(
        name=result.name, num_requests=len(requests),
        ttft_median_after_first_s=statistics.median(ttfts[1:] or ttfts),
        ttft_p90_s=float(np.percentile(ttfts, 90)), ttft_sum_s=sum(ttfts),
        prefill_tokens_computed=sum(r.usage.computed_tokens for r in requests),
        prefill_tokens_reused=sum(r.usage.reused_tokens for r in requests),
        expected_reused=sum(r.expected_reused for r in requests),
        reuse_sources=tuple(sorted({r.usage.source for r in requests})),
        total_s=result.total_s, decode_tokens_per_s=decode_rate, peak_rss_bytes=result.peak_rss_bytes,
        held_tokens=result.held_tokens, kv_bytes=result.kv_bytes)


def to_json(summaries: list[SystemSummary], floor: Floor) -> dict:
    """Every figure, in exactly the shape the issue fixes."""
    keys = ("ttft_median_after_first_s", "ttft_p90_s", "prefill_tokens_computed", "prefill_tokens_reused",
            "total_s", "decode_tokens_per_s", "peak_rss_bytes")
    return {"systems": {s.name: {key: getattr(s, key) for key in keys} for s in summaries},
            "floor": {"warm_ttft_s": floor.warm_ttft_s, "floor_s": floor.floor_s}}


def table(summaries: list[SystemSummary]) -> str:
    """A Markdown table: readable on stdout and pasted as is into BENCHMARKS.md."""
    header = ("| system | TTFT median after 1st (s) | TTFT p90 (s) | TTFT sum (s) | prompt tokens computed "
              "| reused (source) | reuse expected | decode tok/s | wall (s) | peak RSS (MiB) | KV held: tokens (bytes) |")
    lines = [header, _rule(header)]
    for s in summaries:
        check = "" if s.reuse_agrees else " ≠"
        lines.append(
            f"| {s.name} | {s.ttft_median_after_first_s:.3f} | {s.ttft_p90_s:.3f} | {s.ttft_sum_s:.2f} "
            f"| {s.prefill_tokens_computed} | {s.prefill_tokens_reused} ({', '.join(s.reuse_sources)}){check} "
            f"| {s.expected_reused} | {s.decode_tokens_per_s:.1f} | {s.total_s:.1f} "
            f"| {s.peak_rss_bytes / _MIB:.0f} | {_held(s)} |")
    return "\n".join(lines)


def ratios(summaries: list[SystemSummary], floor: Floor) -> list[str]:
    """segcache against every other system, then against the floor, then the issue's goals."""
    ours = next((s for s in summaries if s.name == "segcache"), None)
    if ours is None:
        return []
    lines = []
    for peer in (s for s in summaries if s is not ours):
        lines.append(
            f"- vs {peer.name}: median TTFT after the first request {ours.ttft_median_after_first_s:.3f} s vs "
            f"{peer.ttft_median_after_first_s:.3f} s ({_speed(peer.ttft_median_after_first_s, ours.ttft_median_after_first_s)}); "
            f"total prefill (TTFT sum) {ours.ttft_sum_s:.1f} s vs {peer.ttft_sum_s:.1f} s "
            f"({_speed(peer.ttft_sum_s, ours.ttft_sum_s)}); decode {ours.decode_tokens_per_s:.1f} vs "
            f"{peer.decode_tokens_per_s:.1f} tokens/s ({_speed(ours.decode_tokens_per_s, peer.decode_tokens_per_s)})")
    if floor.warm_ttft_s is not None and floor.floor_s:
        lines.append(f"- warm TTFT {floor.warm_ttft_s:.3f} s vs the engine's floor {floor.floor_s:.3f} s: "
                     f"{floor.warm_ttft_s / floor.floor_s:.2f}x the floor")
    else:
        lines.append("- warm TTFT vs the floor: floor not measured")
    return lines + _goals(ours, {s.name: s for s in summaries}, floor)


def _goals(ours: SystemSummary, by_name: dict[str, SystemSummary], floor: Floor) -> list[str]:
    """The issue's targets, each checked against this run (targets, not pass/fail tests)."""
    goals = []
    if "segcache-nocache" in by_name:
        factor = by_name["segcache-nocache"].ttft_median_after_first_s / ours.ttft_median_after_first_s
        goals.append(f"median TTFT after the first at least 3x lower than with the cache off: {factor:.1f}x, "
                     f"{_met(factor >= 3)}")
    if "llamacpp-cache" in by_name:
        factor = by_name["llamacpp-cache"].ttft_median_after_first_s / ours.ttft_median_after_first_s
        goals.append(f"median TTFT after the first at most half of llama-cpp-python's with its RAM cache: "
                     f"{factor:.1f}x lower, {_met(factor >= 2)}")
    if floor.warm_ttft_s is not None and floor.floor_s:
        factor = floor.warm_ttft_s / floor.floor_s
        goals.append(f"warm TTFT within 1.25x of the floor: {factor:.2f}x, {_met(factor <= 1.25)}")
    return [f"- goal: {goal}" for goal in goals]


def _speed(slower: float, faster: float) -> str:
    """'3.10x better' when the first figure is the larger one, '0.8x' reads as '1.25x worse'."""
    if slower <= 0 or faster <= 0:
        return "n/a"
    ratio = slower / faster
    return f"{ratio:.2f}x better" if ratio >= 1 else f"{1 / ratio:.2f}x worse"


def _met(condition: bool) -> str:
    return "met" if condition else "not met"


def _rule(header: str) -> str:
    return "|" + "---|" * (header.count("|") - 1)


def _held(s: SystemSummary) -> str:
    held = f"{s.held_tokens}"
    return held + (f" ({s.kv_bytes / _MIB:.1f} MiB)" if s.kv_bytes is not None else "")
