"""The load run's figures: counts by outcome, latency percentiles, peak bytes vs budget, tree check."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from segcache.reliability.exchange import Outcome
from segcache.reliability.server_state import MemoryTrace, TreeCheck

_MAX_ERROR_SAMPLES = 10


@dataclass(frozen=True)
class LoadReport:
    url: str
    model: str
    config: object                # LoadConfig
    tenants: tuple[str, ...]
    wall_s: float
    outcomes: tuple[Outcome, ...]
    memory: MemoryTrace
    evictions: dict[str, float]   # nodes evicted during the run, by reason
    checks: tuple[TreeCheck, ...]
    load_average: tuple[float, float]   # 1-minute load average at start and end
    final_bytes: float                  # KV bytes once every client had its last answer

    @property
    def bytes_per_token(self) -> float | None:
        tokens = sum(c.tokens for c in self.checks)
        return sum(c.bytes for c in self.checks) / tokens if tokens else None

    @property
    def overshoot_bound_bytes(self) -> float:
        """The engine inserts a request's new nodes as it prefills and evicts once it finishes, so while a
        request runs the tree may hold the budget plus that request's new KV, and never more."""
        new_tokens = max((o.prompt_tokens - o.cached_tokens for o in self.outcomes), default=0)
        return new_tokens * (self.bytes_per_token or 0.0)

    @property
    def budget_held(self) -> bool:
        """Within budget when idle; while busy, over it by at most one running request's new KV."""
        memory = self.memory
        return self.final_bytes <= memory.capacity_bytes and \
            memory.peak_bytes <= memory.capacity_bytes + self.overshoot_bound_bytes

    def count(self, *categories: str) -> int:
        return sum(1 for o in self.outcomes if o.category in categories)

    @property
    def passed(self) -> bool:
        """No unexpected answer, a clean tree, and the byte budget held."""
        return self.count("error") == 0 and all(c.clean for c in self.checks) and self.budget_held

    def summary(self) -> dict:
        succeeded = [o for o in self.outcomes if o.succeeded]
        generated = [o for o in succeeded if o.prompt_tokens]
        streamed = [o.ttft_s for o in succeeded if o.ttft_s is not None]
        memory = self.memory
        return {
            "url": self.url, "model": self.model, "tenants": list(self.tenants),
            "config": dataclasses.asdict(self.config), "wall_s": round(self.wall_s, 2),
            "requests": len(self.outcomes), "succeeded": len(succeeded),
            "resent_after_segment_not_found": self.count("resent"), "intended_4xx": self.count("intended_4xx"),
            "errors": self.count("error"), "error_samples": self._error_samples(),
            "reconnects": sum(1 for o in self.outcomes if o.reconnected),
            "requests_per_s": round(len(self.outcomes) / self.wall_s, 3) if self.wall_s else None,
            "latency_s": _percentiles([o.latency_s for o in succeeded]),
            "stream_ttft_s": _percentiles(streamed),
            "cached_token_share": round(sum(o.cached_tokens for o in generated) /
                                        max(1, sum(o.prompt_tokens for o in generated)), 4),
            "by_kind": self._by_kind(),
            "memory": {"peak_bytes": int(memory.peak_bytes), "capacity_bytes": int(memory.capacity_bytes),
                       "peak_fraction": round(memory.peak_bytes / memory.capacity_bytes, 4)
                       if memory.capacity_bytes else None,
                       "samples": memory.num_samples, "samples_over_budget": memory.num_over_budget,
                       "failed_polls": memory.num_failed_polls, "final_bytes": int(self.final_bytes),
                       "bytes_per_token": round(self.bytes_per_token, 1) if self.bytes_per_token else None,
                       "max_overshoot_bytes": int(max(0.0, memory.peak_bytes - memory.capacity_bytes)),
                       "overshoot_bound_bytes": int(self.overshoot_bound_bytes), "budget_held": self.budget_held},
            "evictions": {k: int(v) for k, v in sorted(self.evictions.items())},
            "tree_check": [dataclasses.asdict(c) for c in self.checks],
            "load_average": {"start": self.load_average[0], "end": self.load_average[1],
                             "max": round(memory.max_load_average, 2)},
            "passed": self.passed,
        }

    def as_text(self) -> str:
        s = self.summary()
        lat, mem = s["latency_s"], s["memory"]
        lines = [
            f"segcache load: {s['config']['clients']} clients, {len(self.tenants)} tenants, "
            f"{s['wall_s']} s against {self.url} ({self.model})",
            f"  requests        {s['requests']} ({s['requests_per_s']}/s): {s['succeeded']} succeeded "
            f"({s['resent_after_segment_not_found']} resent with content after segment_not_found), "
            f"{s['intended_4xx']} intended 4xx, {s['errors']} errors, {s['reconnects']} reconnects",
            f"  latency         p50 {lat['p50']} s, p99 {lat['p99']} s, max {lat['max']} s "
            f"(stream TTFT p50 {s['stream_ttft_s']['p50']} s)",
            f"  cached share    {s['cached_token_share']:.1%} of prompt tokens read from the cache",
            f"  KV bytes        peak {mem['peak_bytes']:,} of {mem['capacity_bytes']:,} budget "
            f"({mem['samples']} samples, {mem['samples_over_budget']} over budget by up to "
            f"{mem['max_overshoot_bytes']:,}; one request's new KV is at most {mem['overshoot_bound_bytes']:,}); "
            f"{mem['final_bytes']:,} when idle",
            f"  evictions       {s['evictions'] or 'none'}",
            "  tree check      " + ", ".join(f"{c['tenant']}: {c['check'] or c['status']} "
                                              f"({c['num_nodes']} nodes, {c['bytes']:,} B)" for c in s["tree_check"]),
            f"  load average    {s['load_average']['start']:.2f} at start, max {s['load_average']['max']}, "
            f"{s['load_average']['end']:.2f} at end",
            "  by kind         " + "; ".join(f"{k} {v['count']} {v['statuses']}" for k, v in s["by_kind"].items()),
        ]
        lines += [f"  error: {e['kind']} {e['status']} {e['code']}: {e['detail']}" for e in s["error_samples"]]
        lines.append("PASSED" if s["passed"] else "FAILED")
        return "\n".join(lines)

    def _by_kind(self) -> dict:
        kinds = sorted({o.kind for o in self.outcomes})
        return {k: {"count": sum(1 for o in self.outcomes if o.kind == k),
                    "statuses": dict(sorted(Counter(str(o.status) for o in self.outcomes if o.kind == k).items()))}
                for k in kinds}

    def _error_samples(self) -> list[dict]:
        errors = [o for o in self.outcomes if o.category == "error"][:_MAX_ERROR_SAMPLES]
        return [{"kind": o.kind, "status": o.status, "code": o.code, "detail": o.detail} for o in errors]


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4), "max": round(max(values), 4), "n": len(values)}
