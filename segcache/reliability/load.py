"""`segcache load`: N concurrent clients across tenants, bounded in time and count, then a tree check.

              +-- client 0 (tenant a) --+
   deadline   +-- client 1 (tenant b) --+--> server <-- metrics poller (peak KV bytes)
   or budget  +-- ...                 --+
              +-- client N-1          --+         then GET /v1/cache?check=true per tenant

Clients are threads with one httpx connection each; the server's single engine worker serialises
the model work, so the run measures queueing and cache behaviour under contention as users see it.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass

import httpx

from segcache.reliability.exchange import Outcome, send
from segcache.reliability.load_report import LoadReport
from segcache.reliability.server_state import MetricsPoller, check_tree, evictions_by_reason, read_metrics
from segcache.reliability.target import Target, headers
from segcache.reliability.workload import GUIDE_NAME, ClientMix, tenant_blocks


@dataclass(frozen=True)
class LoadConfig:
    clients: int = 16
    duration_s: float = 120.0
    max_requests: int = 5000      # across all clients; the run also stops at the deadline
    max_tokens: int = 8           # completion tokens per generation request
    seed: int = 0
    rules_words: int = 180        # each tenant's global block (~1.4 tokens a word)
    agent_words: int = 60         # each agent block and the registry entry
    clear_cache: bool = True      # clients sometimes DELETE their tenant's cache mid-run
    poll_interval_s: float = 0.2
    timeout_s: float = 600.0      # one request, client-side

    def __post_init__(self) -> None:
        if self.clients < 1 or self.duration_s <= 0 or self.max_requests < 1:
            raise ValueError("clients, duration and max_requests must be positive")


class _Budget:
    """The shared request count and deadline: a client takes a ticket before each request."""

    def __init__(self, max_requests: int, deadline: float):
        self._left, self._deadline, self._lock = max_requests, deadline, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0 or time.monotonic() >= self._deadline:
                return False
            self._left -= 1
            return True


def run_load(target: Target, config: LoadConfig) -> LoadReport:
    """Run the mix against `target` and report what clients saw and what the server says of itself."""
    load_before = os.getloadavg()
    with httpx.Client(base_url=target.url, timeout=config.timeout_s) as http:
        model = served_model(http, target.any_key())
        blocks = {t: tenant_blocks(t, config.seed, config.rules_words, config.agent_words) for t in target.tenants}
        for tenant, block in blocks.items():
            _register_guide(http, target.keys_of(tenant)[0], block.guide)
        before = evictions_by_reason(read_metrics(http, target.metrics_key()))
        outcomes: list[Outcome] = []
        started = time.monotonic()
        budget = _Budget(config.max_requests, started + config.duration_s)
        with MetricsPoller(target, config.poll_interval_s) as poller:
            threads = [threading.Thread(target=_client, name=f"load-client-{i}",
                                        args=(target, config, i, model, blocks, budget, outcomes))
                       for i in range(config.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        wall_s = time.monotonic() - started
        final = read_metrics(http, target.metrics_key())
        after = evictions_by_reason(final)
        checks = tuple(check_tree(http, t, target.keys_of(t)[0]) for t in target.tenants)
    evictions = {reason: after[reason] - before.get(reason, 0.0) for reason in after}
    return LoadReport(url=target.url, model=model, config=config, tenants=tuple(target.tenants),
                      wall_s=wall_s, outcomes=tuple(outcomes), memory=poller.trace(), evictions=evictions,
                      checks=checks, load_average=(load_before[0], os.getloadavg()[0]),
                      final_bytes=final.get("segcache_cache_bytes", 0.0))


def served_model(http: httpx.Client, key: str | None) -> str:
    response = http.get("/v1/models", headers=headers(key))
    response.raise_for_status()
    return response.json()["data"][0]["id"]


def _register_guide(http: httpx.Client, key: str | None, content: str) -> None:
    response = http.put(f"/v1/segments/{GUIDE_NAME}", json={"content": content}, headers=headers(key))
    response.raise_for_status()


def _client(target: Target, config: LoadConfig, index: int, model: str, blocks: dict, budget: _Budget,
            outcomes: list[Outcome]) -> None:
    """One client: its tenant's blocks, its own keys in turn, requests until the budget says stop."""
    tenant = target.tenants[index % len(target.tenants)]
    keys = target.keys_of(tenant)
    others = tuple(b for t, b in blocks.items() if t != tenant)
    mix = ClientMix(random.Random(f"{config.seed}:client:{index}"), model, blocks[tenant], others,
                    config.max_tokens, config.clear_cache)
    with httpx.Client(base_url=target.url, timeout=config.timeout_s) as http:
        turn = 0
        while budget.take():
            step = mix.next_step()
            outcome = send(http, step, keys[turn % len(keys)])
            outcomes.append(outcome)            # list.append is atomic under the GIL
            if outcome.succeeded and step.body and "messages" in step.body:
                mix.remember(step.body["messages"][-1]["content"], outcome.reply)
            turn += 1
