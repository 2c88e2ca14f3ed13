"""Prometheus metrics, in a registry of the app's own (no module globals).

Every cache figure exists per tenant (`segcache_tenant_*{tenant}`); a tenant's key reads only its own
series. The server-wide figures (`segcache_cache_bytes`, `segcache_queue_depth`, `segcache_evictions_total`,
...) would tell one tenant about another's traffic, so only the admin key reads them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from segcache.cache.keys import ScopeKey
from segcache.cache.tree import Eviction
from segcache.engine.request import Finished, PromptReport

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_PUBLIC = ("segcache_cache_capacity_bytes",)  # configuration, not traffic: every caller may read it


@dataclass(frozen=True)
class TenantFigures:
    tenant: str
    cache_bytes: int
    cache_nodes: int
    pinned_bytes: int
    share_bytes: int
    queued: int  # this tenant's requests waiting for the engine


@dataclass(frozen=True)
class ServerFigures:
    cache_bytes: int
    capacity_bytes: int
    cache_nodes: int
    queue_depth: int
    tenants: tuple[TenantFigures, ...]


class Metrics:
    def __init__(self, tenant_of_scope: Callable[[ScopeKey], str | None] = lambda scope: None) -> None:
        """`tenant_of_scope` names the tenant an eviction belongs to (None: not a tenant we know)."""
        self.tenant_of_scope = tenant_of_scope
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("segcache_requests", "Completed generation requests", ["tenant"], registry=r)
        self.hit_tokens = Counter("segcache_cache_hit_tokens", "Prompt tokens read from the cache", ["tenant"], registry=r)
        self.miss_tokens = Counter("segcache_cache_miss_tokens", "Prompt tokens computed in prefill", ["tenant"], registry=r)
        self.prefill_tokens = Counter("segcache_prefill_tokens", "Prompt tokens run through the model in prefill "
                                      "(equal to cache misses: hits are never recomputed)", ["tenant"], registry=r)
        self.decode_tokens = Counter("segcache_decode_tokens", "Tokens generated", ["tenant"], registry=r)
        self.evictions = Counter("segcache_evictions", "Cache nodes removed (all tenants)", ["reason"], registry=r)
        self.evicted_bytes = Counter("segcache_evicted_bytes", "KV bytes removed (all tenants)", ["reason"], registry=r)
        self.tenant_evictions = Counter("segcache_tenant_evictions", "This tenant's cache nodes removed",
                                        ["tenant", "reason"], registry=r)
        self.tenant_evicted_bytes = Counter("segcache_tenant_evicted_bytes", "This tenant's KV bytes removed",
                                            ["tenant", "reason"], registry=r)
        self.cache_bytes = Gauge("segcache_cache_bytes", "KV bytes held in the cache (all tenants)", registry=r)
        self.cache_capacity = Gauge("segcache_cache_capacity_bytes", "KV byte budget (--cache-bytes)", registry=r)
        self.cache_nodes = Gauge("segcache_cache_nodes", "Nodes in the cache tree (all tenants)", registry=r)
        self.queue_depth = Gauge("segcache_queue_depth", "Requests waiting for the engine (all tenants)", registry=r)
        self.tenant_bytes = Gauge("segcache_tenant_cache_bytes", "KV bytes this tenant holds", ["tenant"], registry=r)
        self.tenant_nodes = Gauge("segcache_tenant_cache_nodes", "Cache nodes this tenant holds", ["tenant"], registry=r)
        self.tenant_pinned = Gauge("segcache_tenant_pinned_bytes", "KV bytes this tenant pins", ["tenant"], registry=r)
        self.tenant_share = Gauge("segcache_tenant_share_bytes", "This tenant's share of the budget now",
                                  ["tenant"], registry=r)
        self.tenant_queued = Gauge("segcache_tenant_queued", "This tenant's requests waiting for the engine",
                                   ["tenant"], registry=r)
        self.tenant_queue_depth = Gauge("segcache_tenant_queue_depth", "Requests of this tenant waiting for a "
                                        "running slot", ["tenant"], registry=r)
        self.tenant_queue_position = Gauge("segcache_tenant_queue_position", "Queue position of this tenant's "
                                           "oldest waiting request (0 = next to run)", ["tenant"], registry=r)
        self.decode_work = Gauge("segcache_decode_work", "Decode forwards since start (all tenants): steps, rows "
                                 "(tokens) and seconds spent in them", ["figure"], registry=r)
        self.running = Gauge("segcache_running_requests", "Requests prefilling or decoding", registry=r)
        self.running_kv_bytes = Gauge("segcache_running_kv_bytes", "KV buffer bytes held by running requests",
                                      registry=r)
        self.tier_hit_tokens = Counter("segcache_tenant_tier_hit_tokens", "Prompt tokens this tenant read from "
                                       "each cache tier (ram, disk)", ["tenant", "tier"], registry=r)
        self.tier_hit_bytes = Counter("segcache_tenant_tier_hit_bytes", "KV bytes this tenant read from each "
                                      "cache tier (ram, disk)", ["tenant", "tier"], registry=r)
        self.disk_bytes = Gauge("segcache_disk_cache_bytes", "KV file bytes in the disk tier (all tenants)", registry=r)
        self.disk_events = Gauge("segcache_disk_cache_events", "Disk tier events since start: writes, loads, "
                                 "corrupt (files failing verification: recomputed), evicted, write_errors",
                                 ["event"], registry=r)
        self.shared_events = Gauge("segcache_shared_cache_events", "Shared tier events since start: writes, loads, "
                                   "misses, corrupt, errors (store down or slow: recomputed), skipped", ["event"],
                                   registry=r)
        self._queued_tenants: set[str] = set()
        self._positioned_tenants: set[str] = set()
        self.ttft = Histogram("segcache_ttft_seconds", "Time to first token", ["tenant"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("segcache_request_seconds", "Request latency, start to last token", ["tenant"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.prefill = Histogram("segcache_prefill_seconds", "Prefill time per request", ["tenant"],
                                 buckets=_LATENCY_BUCKETS, registry=r)

    def observe_prompt(self, tenant: str, report: PromptReport) -> None:
        self.hit_tokens.labels(tenant).inc(report.cached_tokens)
        self.miss_tokens.labels(tenant).inc(report.prompt_tokens - report.cached_tokens)
        self.prefill_tokens.labels(tenant).inc(report.prompt_tokens - report.cached_tokens)
        self.prefill.labels(tenant).observe(report.prefill_s)
        for tier, tokens, num_bytes in report.tier_hits:
            self.tier_hit_tokens.labels(tenant, tier).inc(tokens)
            self.tier_hit_bytes.labels(tenant, tier).inc(num_bytes)

    def observe_finished(self, tenant: str, finished: Finished, timings: dict) -> None:
        self.requests.labels(tenant).inc()
        self.decode_tokens.labels(tenant).inc(finished.completion_tokens)
        self.ttft.labels(tenant).observe(timings["ttft_s"])
        self.latency.labels(tenant).observe(timings["total_s"])

    def observe_queue(self, snapshot) -> None:
        """The scheduler's QueueSnapshot: per-tenant depth (0 once drained) and oldest waiting position
        (no series while nothing of the tenant waits)."""
        for tenant in self._positioned_tenants - set(snapshot.first_position):
            self.tenant_queue_position.remove(tenant)
        self._positioned_tenants = set(snapshot.first_position)
        self._queued_tenants |= set(snapshot.waiting)
        for tenant in self._queued_tenants:
            self.tenant_queue_depth.labels(tenant).set(snapshot.waiting.get(tenant, 0))
        for tenant, position in snapshot.first_position.items():
            self.tenant_queue_position.labels(tenant).set(position)
        self.running.set(snapshot.running)
        self.running_kv_bytes.set(snapshot.running_kv_bytes)

    def observe_decode(self, stats) -> None:
        """The engine's DecodeStats: decode tokens per second of decode forward = rows / seconds."""
        for figure in ("steps", "rows", "seconds"):
            self.decode_work.labels(figure).set(getattr(stats, figure))

    def observe_disk(self, disk) -> None:
        """The disk tier's figures (a DiskTier), read when /metrics is asked."""
        self.disk_bytes.set(disk.used_bytes())
        for event, count in dataclasses.asdict(disk.stats).items():
            self.disk_events.labels(event).set(count)

    def observe_shared(self, shared) -> None:
        """The shared tier's figures (a SharedTier), read when /metrics is asked."""
        for event, count in dataclasses.asdict(shared.stats).items():
            self.shared_events.labels(event).set(count)

    def observe_evictions(self, evictions: list[Eviction]) -> None:
        for eviction in evictions:
            reason = eviction.reason.value
            self.evictions.labels(reason).inc()
            self.evicted_bytes.labels(reason).inc(eviction.num_bytes)
            tenant = self.tenant_of_scope(eviction.scope)
            if tenant is not None:
                self.tenant_evictions.labels(tenant, reason).inc()
                self.tenant_evicted_bytes.labels(tenant, reason).inc(eviction.num_bytes)

    def render(self, figures: ServerFigures, tenant: str | None) -> bytes:
        """Exposition text: everything when `tenant` is None (admin), else that tenant's series only."""
        self.cache_bytes.set(figures.cache_bytes)
        self.cache_capacity.set(figures.capacity_bytes)
        self.cache_nodes.set(figures.cache_nodes)
        self.queue_depth.set(figures.queue_depth)
        for own in figures.tenants:
            self.tenant_bytes.labels(own.tenant).set(own.cache_bytes)
            self.tenant_nodes.labels(own.tenant).set(own.cache_nodes)
            self.tenant_pinned.labels(own.tenant).set(own.pinned_bytes)
            self.tenant_share.labels(own.tenant).set(own.share_bytes)
            self.tenant_queued.labels(own.tenant).set(own.queued)
        text = generate_latest(self.registry).decode()
        if tenant is not None:
            text = "\n".join(line for line in text.split("\n") if _visible_to(line, tenant))
        return text.encode()


def _visible_to(line: str, tenant: str) -> bool:
    if line.startswith("#") or not line:
        return True
    if line.startswith(_PUBLIC):
        return True
    return f'tenant="{tenant}"' in line
