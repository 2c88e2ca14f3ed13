"""What the server says about itself: /metrics samples during a run, and its tree check at the end."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

import httpx

from segcache.reliability.target import Target, headers

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def read_metrics(http: httpx.Client, key: str | None) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as the server printed them)."""
    response = http.get("/metrics", headers=headers(key))
    response.raise_for_status()
    samples = {}
    for line in response.text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def evictions_by_reason(samples: dict[str, float]) -> dict[str, float]:
    found = (re.fullmatch(r'segcache_evictions_total\{reason="([^"]+)"\}', name) for name in samples)
    return {m.group(1): samples[m.group(0)] for m in found if m}


@dataclass(frozen=True)
class MemoryTrace:
    """KV bytes in use as /metrics reported them, sampled while the run lasted."""

    peak_bytes: float
    capacity_bytes: float
    num_samples: int
    num_over_budget: int
    num_failed_polls: int
    max_load_average: float


class MetricsPoller:
    """Polls /metrics on its own thread until stopped; keeps the peak of segcache_cache_bytes."""

    def __init__(self, target: Target, interval_s: float):
        self.target, self.interval_s = target, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="metrics-poller", daemon=True)
        self._peak = self._capacity = 0.0
        self._samples = self._over = self._failed = 0
        self._max_load = os.getloadavg()[0]

    def __enter__(self) -> "MetricsPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def trace(self) -> MemoryTrace:
        return MemoryTrace(self._peak, self._capacity, self._samples, self._over, self._failed, self._max_load)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.target.url, timeout=30) as http:
            while not self._stop.is_set():
                self._sample(http)
                self._stop.wait(self.interval_s)
            self._sample(http)

    def _sample(self, http: httpx.Client) -> None:
        try:
            samples = read_metrics(http, self.target.metrics_key())
        except httpx.HTTPError:
            self._failed += 1
            return
        used, capacity = samples.get("segcache_cache_bytes", 0.0), samples.get("segcache_cache_capacity_bytes", 0.0)
        self._samples += 1
        self._peak, self._capacity = max(self._peak, used), capacity
        self._over += used > capacity
        self._max_load = max(self._max_load, os.getloadavg()[0])


@dataclass(frozen=True)
class TreeCheck:
    """GET /v1/cache?check=true for one tenant: the server ran tree.check() over the whole tree."""

    tenant: str
    status: int
    check: str | None          # "ok", or None when the server did not run a check
    num_nodes: int
    tokens: int
    bytes: int
    message: str = ""

    @property
    def clean(self) -> bool:
        return self.status == 200 and self.check == "ok"


def check_tree(http: httpx.Client, tenant: str, key: str | None) -> TreeCheck:
    response = http.get("/v1/cache", params={"check": "true"}, headers=headers(key))
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") or {}
    return TreeCheck(tenant, response.status_code, body.get("check"), body.get("num_nodes", 0),
                     body.get("tokens", 0), body.get("bytes", 0), error.get("message", ""))
