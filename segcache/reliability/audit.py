"""`segcache audit`: can one API key tell from response times alone that another key's prompt is cached?

After Gu et al., "Auditing Prompt Caching in Language Model APIs" (ICML 2025). Each sample draws a
fresh random prefix nobody has sent:

    hit procedure:   victim sends [prefix P, victim question]; attacker sends [P, attacker question]
    miss procedure:  attacker sends [fresh prefix Q, attacker question]

and records the attacker's time to first token (streaming, request sent -> first content chunk).
A two-sample Kolmogorov-Smirnov test compares the hit and miss TTFT distributions. With the
attacker's key in the victim's tenant the cache is shared by design, so the test must detect it
(tiny p-value); with the attacker in another tenant nothing is shared, so the two distributions
must be the same (large p-value). Procedures and settings run interleaved in a random order, so a
change in machine load over the run affects both sides of each comparison alike.
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

from openai import OpenAI
from scipy.stats import ks_2samp

from segcache.reliability.target import require_loopback
from segcache.reliability.words import random_words

SETTINGS = ("within_tenant", "across_tenants")
ATTACKER_QUESTION = "Summarise the text above in one sentence."


@dataclass(frozen=True)
class AuditKeys:
    victim: str
    same_tenant: str        # maps to the victim's tenant: shares its cache by design
    other_tenant: str       # maps to another tenant: must learn nothing


@dataclass(frozen=True)
class AuditConfig:
    samples: int = 40             # per procedure and setting
    prefix_words: int = 250       # ~350 tokens: prefill dominates a miss's TTFT
    max_tokens: int = 2
    alpha: float = 0.01           # significance level for "detected"
    seed: int | None = None       # None: fresh randomness every run

    def __post_init__(self) -> None:
        if self.samples < 1 or self.prefix_words < 1 or not 0 < self.alpha < 1:
            raise ValueError("samples and prefix_words must be positive and alpha in (0, 1)")


@dataclass(frozen=True)
class Timing:
    procedure: str                # hit | miss
    ttft_s: float                 # what the attacker measures
    server_ttft_s: float | None   # what the server reports in `timings`, for reference
    cached_prefix_tokens: int
    prompt_tokens: int


@dataclass(frozen=True)
class Comparison:
    setting: str
    hits: tuple[Timing, ...]
    misses: tuple[Timing, ...]

    def as_json(self, alpha: float) -> dict:
        hit, miss = [t.ttft_s for t in self.hits], [t.ttft_s for t in self.misses]
        with warnings.catch_warnings():   # ties make scipy fall back from the exact method, and say so
            warnings.simplefilter("ignore", RuntimeWarning)
            test = ks_2samp(hit, miss)
        return {"p_value": float(test.pvalue), "statistic": float(test.statistic),
                "n_hit": len(hit), "n_miss": len(miss), "detected": bool(test.pvalue < alpha),
                "median_ttft_hit_s": _median(hit), "median_ttft_miss_s": _median(miss),
                "median_server_ttft_hit_s": _median([t.server_ttft_s for t in self.hits]),
                "median_server_ttft_miss_s": _median([t.server_ttft_s for t in self.misses]),
                "median_cached_prefix_tokens_hit": _median([t.cached_prefix_tokens for t in self.hits]),
                "median_cached_prefix_tokens_miss": _median([t.cached_prefix_tokens for t in self.misses]),
                "median_prompt_tokens": _median([t.prompt_tokens for t in self.hits + self.misses])}


def run_audit(url: str, keys: AuditKeys, config: AuditConfig) -> dict:
    """Run both settings interleaved; the JSON report holds p-values, sample counts and medians."""
    require_loopback(url)
    rng = random.Random(config.seed if config.seed is not None else secrets.randbits(64))
    clients = {role: OpenAI(base_url=url.rstrip("/") + "/v1", api_key=key, max_retries=0, timeout=600)
               for role, key in asdict(keys).items()}
    model = clients["victim"].models.list().data[0].id
    for client in clients.values():     # first requests pay one-off costs: keep them out of the samples
        _attacker_ttft(client, model, random_words(rng, 20), config.max_tokens, "miss")
    load_start = os.getloadavg()[0]
    timings: dict[tuple[str, str], list[Timing]] = {(s, p): [] for s in SETTINGS for p in ("hit", "miss")}
    for _ in range(config.samples):
        jobs = list(timings)
        rng.shuffle(jobs)
        for setting, procedure in jobs:
            attacker = clients["same_tenant" if setting == "within_tenant" else "other_tenant"]
            prefix = random_words(rng, config.prefix_words)
            if procedure == "hit":
                _victim_sends(clients["victim"], model, prefix, rng)
            timings[(setting, procedure)].append(_attacker_ttft(attacker, model, prefix, config.max_tokens, procedure))
    report = {"url": url, "model": model, "samples_per_procedure": config.samples,
              "prefix_words": config.prefix_words, "max_tokens": config.max_tokens, "alpha": config.alpha}
    for setting in SETTINGS:
        comparison = Comparison(setting, tuple(timings[(setting, "hit")]), tuple(timings[(setting, "miss")]))
        report[setting] = comparison.as_json(config.alpha)
    report["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    report["passed"] = report["within_tenant"]["detected"] and not report["across_tenants"]["detected"]
    return report


def _victim_sends(client: OpenAI, model: str, prefix: str, rng: random.Random) -> None:
    question = "Question: " + random_words(rng, 10)
    client.chat.completions.create(model=model, max_tokens=1, temperature=0, messages=[
        {"role": "system", "content": prefix}, {"role": "user", "content": question}])


def _attacker_ttft(client: OpenAI, model: str, prefix: str, max_tokens: int, procedure: str) -> Timing:
    messages = [{"role": "system", "content": prefix}, {"role": "user", "content": ATTACKER_QUESTION}]
    started = time.perf_counter()
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    ttft, usage, server = None, {}, {}
    for chunk in stream:
        for choice in chunk.choices:
            if ttft is None and (choice.delta.content or choice.finish_reason):
                ttft = time.perf_counter() - started
        if chunk.usage is not None:
            usage, server = chunk.usage.model_dump(), (chunk.model_extra or {}).get("timings") or {}
    if ttft is None:
        raise RuntimeError("the stream ended without a content chunk or a finish reason")
    return Timing(procedure, ttft, server.get("ttft_s"), int(usage.get("cached_prefix_tokens") or 0),
                  int(usage.get("prompt_tokens") or 0))


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(statistics.median(present)), 6) if present else None


def as_text(report: dict) -> str:
    lines = [f"segcache audit: {report['model']} at {report['url']}, {report['samples_per_procedure']} samples "
             f"per procedure, prefixes of {report['prefix_words']} random words, alpha {report['alpha']}",
             f"{'setting':<16}{'p-value':>12}{'KS D':>7}{'n hit':>7}{'n miss':>7}{'TTFT hit':>10}"
             f"{'TTFT miss':>11}{'cached hit':>12}{'cached miss':>13}  verdict"]
    for setting in SETTINGS:
        r = report[setting]
        verdict = "caching detected" if r["detected"] else "no timing difference detected"
        lines.append(f"{setting:<16}{r['p_value']:>12.3g}{r['statistic']:>7.3f}{r['n_hit']:>7}{r['n_miss']:>7}"
                     f"{r['median_ttft_hit_s']:>9.4f}s{r['median_ttft_miss_s']:>10.4f}s"
                     f"{r['median_cached_prefix_tokens_hit']:>12g}{r['median_cached_prefix_tokens_miss']:>13g}  {verdict}")
    load = report["load_average"]
    lines.append(f"load average {load['start']:.2f} at start, {load['end']:.2f} at end; "
                 + ("PASSED" if report["passed"] else "FAILED") + " (detected within the tenant, not across)")
    return "\n".join(lines)
