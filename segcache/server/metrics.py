"""Prometheus metrics, in a registry of the app's own (no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from segcache.cache.tree import Eviction
from segcache.engine.request import Finished, PromptReport

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("segcache_requests", "Completed generation requests", ["tenant"], registry=r)
        self.hit_tokens = Counter("segcache_cache_hit_tokens", "Prompt tokens read from the cache", ["tenant"], registry=r)
        self.miss_tokens = Counter("segcache_cache_miss_tokens", "Prompt tokens computed in prefill", ["tenant"], registry=r)
        self.prefill_tokens = Counter("segcache_prefill_tokens", "Prompt tokens run through the model in prefill "
                                      "(equal to cache misses: hits are never recomputed)", ["tenant"], registry=r)
        self.decode_tokens = Counter("segcache_decode_tokens", "Tokens generated", ["tenant"], registry=r)
        self.evictions = Counter("segcache_evictions", "Cache nodes removed", ["reason"], registry=r)
        self.evicted_bytes = Counter("segcache_evicted_bytes", "KV bytes removed", ["reason"], registry=r)
        self.cache_bytes = Gauge("segcache_cache_bytes", "KV bytes held in the cache", registry=r)
        self.cache_capacity = Gauge("segcache_cache_capacity_bytes", "KV byte budget (--cache-bytes)", registry=r)
        self.cache_nodes = Gauge("segcache_cache_nodes", "Nodes in the cache tree", registry=r)
        self.queue_depth = Gauge("segcache_queue_depth", "Requests waiting for the engine", registry=r)
        self.tenant_queue_depth = Gauge("segcache_tenant_queue_depth", "Requests of this tenant waiting for a "
                                        "running slot", ["tenant"], registry=r)
        self.tenant_queue_position = Gauge("segcache_tenant_queue_position", "Queue position of this tenant's "
                                           "oldest waiting request (0 = next to run)", ["tenant"], registry=r)
        self.running = Gauge("segcache_running_requests", "Requests prefilling or decoding", registry=r)
        self.running_kv_bytes = Gauge("segcache_running_kv_bytes", "KV buffer bytes held by running requests",
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

    def observe_evictions(self, evictions: list[Eviction]) -> None:
        for eviction in evictions:
            self.evictions.labels(eviction.reason.value).inc()
            self.evicted_bytes.labels(eviction.reason.value).inc(eviction.num_bytes)

    def render(self, used_bytes: int, capacity: int, nodes: int, queue_depth: int, tenant: str | None) -> bytes:
        """Exposition text; with `tenant`, other tenants' series are left out."""
        self.cache_bytes.set(used_bytes)
        self.cache_capacity.set(capacity)
        self.cache_nodes.set(nodes)
        self.queue_depth.set(queue_depth)
        text = generate_latest(self.registry).decode()
        if tenant is not None:
            own = f'tenant="{tenant}"'
            text = "\n".join(line for line in text.split("\n") if 'tenant="' not in line or own in line)
        return text.encode()
