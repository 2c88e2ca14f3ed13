"""`segcache load --noisy-neighbour`: does one tenant's flood take another tenant's cache?

    tenant A (victim)  warm its blocks once, then per round: 1 chat reusing them
    tenant B (noise)   per round: 10 requests of fresh text, every 5th a pinned warm

A's hit rate (cached tokens of its segments / their tokens) is reported per window of rounds. Run
against a server with shares (--tenant-cache-share auto) and one without (off), the two columns show
what shares are for: with one global LRU, B's fresh prompts push A's blocks out every round.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from segcache.reliability.load import served_model
from segcache.reliability.server_state import MetricsPoller, check_tree
from segcache.reliability.target import Target, headers
from segcache.reliability.words import random_words


@dataclass(frozen=True)
class NoisyConfig:
    rounds: int = 30
    flood_ratio: int = 10        # B's requests per A request
    pin_every: int = 5           # every n-th B request is a pinned warm of fresh text
    victim_segments: int = 3
    victim_words: int = 100      # per victim segment
    flood_words: int = 150       # per B request
    windows: int = 5             # rows of the hit-rate table
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.rounds, self.flood_ratio, self.pin_every, self.victim_segments, self.windows) < 1:
            raise ValueError("rounds, flood ratio, pin interval, victim segments and windows must be positive")


@dataclass(frozen=True)
class NoisyResult:
    label: str
    hit_rates: tuple[float, ...]   # per round: A's cached segment tokens / A's segment tokens
    flood_statuses: dict[int, int]  # B's answers by status (409: a pin refused for its quota)
    peak_bytes: float
    capacity_bytes: float
    checks_clean: bool

    def windows(self, count: int) -> list[float]:
        size = max(1, len(self.hit_rates) // count)
        chunks = [self.hit_rates[i:i + size] for i in range(0, len(self.hit_rates), size)][:count]
        return [sum(chunk) / len(chunk) for chunk in chunks]

    @property
    def overall(self) -> float:
        return sum(self.hit_rates) / len(self.hit_rates) if self.hit_rates else 0.0


def run_noisy(target: Target, config: NoisyConfig, label: str) -> NoisyResult:
    if len(target.tenants) < 2:
        raise ValueError("the noisy-neighbour run needs keys of two tenants")
    victim, noise = (target.keys_of(tenant)[0] for tenant in target.tenants[:2])
    rng = random.Random(config.seed)
    blocks = [{"id": f"victim-{i}", "content": random_words(rng, config.victim_words)}
              for i in range(config.victim_segments)]
    statuses: dict[int, int] = {}
    rates = []
    with httpx.Client(base_url=target.url, timeout=600) as http, MetricsPoller(target, 0.2) as poller:
        model = served_model(http, victim)
        warmed = http.post("/v1/cache/warm", headers=headers(victim), json={"model": model, "segments": blocks})
        warmed.raise_for_status()
        for _ in range(config.rounds):
            rates.append(_victim_turn(http, victim, model, blocks, rng))
            for step in range(config.flood_ratio):
                status = _flood(http, noise, model, random_words(rng, config.flood_words), step % config.pin_every == 0)
                statuses[status] = statuses.get(status, 0) + 1
        checks = [check_tree(http, tenant, target.keys_of(tenant)[0]) for tenant in target.tenants[:2]]
    memory = poller.trace()
    return NoisyResult(label, tuple(rates), statuses, memory.peak_bytes, memory.capacity_bytes,
                       all(check.clean for check in checks))


def _victim_turn(http: httpx.Client, key: str | None, model: str, blocks: list[dict], rng: random.Random) -> float:
    reply = http.post("/v1/chat/completions", headers=headers(key), json={
        "model": model, "max_tokens": 1, "temperature": 0, "segments": blocks,
        "messages": [{"role": "user", "content": random_words(rng, 12)}]})
    reply.raise_for_status()
    receipts = reply.json()["usage"]["segments"]
    return sum(r["cached_tokens"] for r in receipts) / max(1, sum(r["tokens"] for r in receipts))


def _flood(http: httpx.Client, key: str | None, model: str, text: str, pin: bool) -> int:
    if pin:
        reply = http.post("/v1/cache/warm", headers=headers(key), json={
            "model": model, "pin": True, "segments": [{"id": "flood-pin", "content": text}]})
    else:
        reply = http.post("/v1/chat/completions", headers=headers(key), json={
            "model": model, "max_tokens": 1, "temperature": 0, "segments": [{"id": "flood", "content": text}],
            "messages": [{"role": "user", "content": "Summarise."}]})
    return reply.status_code


def as_text(results: list[NoisyResult], config: NoisyConfig) -> str:
    size = max(1, config.rounds // config.windows)
    lines = [f"noisy neighbour: tenant A reads {config.victim_segments} warmed segments once per round; tenant B "
             f"sends {config.flood_ratio} requests of fresh text per round (every {config.pin_every}th a pinned warm)",
             "", "| rounds | " + " | ".join(f"A hit rate, {r.label}" for r in results) + " |",
             "|---|" + "---|" * len(results)]
    columns = [r.windows(config.windows) for r in results]
    for index in range(len(columns[0])):
        first = index * size + 1
        lines.append(f"| {first}-{first + size - 1} | " + " | ".join(f"{c[index]:.1%}" for c in columns) + " |")
    lines.append("| all | " + " | ".join(f"**{r.overall:.1%}**" for r in results) + " |")
    lines.append("")
    for r in results:
        answers = ", ".join(f"{count}x {status}" for status, count in sorted(r.flood_statuses.items()))
        lines.append(f"- {r.label}: B's answers {answers}; peak KV {r.peak_bytes:,.0f} of {r.capacity_bytes:,.0f} "
                     f"bytes; tree check {'clean' if r.checks_clean else '**FAILED**'}")
    return "\n".join(lines)
