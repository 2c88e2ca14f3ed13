"""`segcache bench tiers`: where a cached segment is served from, and what each tier costs.

A 2,000-token segment followed by a 50-token message, on the engine directly (no HTTP, one token
generated, so the time is the time to first token):

    recompute  an engine with --cache-bytes 0: every token prefilled
    ram        the segment's nodes in the tree
    disk       the tree emptied (RAM eviction only), the nodes read back from --disk-cache files
    shared     another replica (its own empty tree, no disk) reading what the first one computed from a
               redis-server the benchmark starts on loopback (skipped when no server binary exists)
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from segcache.bench.hit import build_texts
from segcache.bench.markdown import replace_section

SECTION = "Cache tiers"


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("tiers", help="TTFT of one cached segment served from RAM, disk, or recomputed")
    parser.add_argument("--model", default="default", help="default | tiny | a local model path")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--segment-tokens", type=int, default=2000)
    parser.add_argument("--message-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="samples of each tier (median reported)")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from segcache.config import ServeConfig
    from segcache.engine.engine import Engine
    from segcache.engine.model import load_model

    loaded = load_model(args.model, args.dtype)
    segment, messages = build_texts(loaded.tokenizer, args.segment_tokens, args.message_tokens, 1 + 4 * args.repeats)
    with tempfile.TemporaryDirectory() as directory, store(Path(directory)) as url:
        config = ServeConfig(model=args.model, dtype=args.dtype, shared_cache=url)
        engines = {"cached": Engine(replace(config, disk_cache=str(Path(directory) / "disk")), loaded=loaded),
                   "replica": Engine(config, loaded=loaded) if url else None,
                   "uncached": Engine(ServeConfig(model=args.model, dtype=args.dtype, cache_bytes=0), loaded=loaded)}
        try:
            figures = sample(engines, segment, messages, args.repeats)
        finally:
            for engine in engines.values():
                if engine is not None:
                    engine.close()
    print(table(figures, args))
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(figures, args))
    return 0


@contextlib.contextmanager
def store(directory: Path):
    """A redis-server on a free loopback port (its URL), or None when no server binary exists."""
    import redis

    from segcache.server.launch import free_port

    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru", "--dir",
                                str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                redis.Redis.from_url(url).ping()
                break
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def sample(engines: dict, segment: str, messages: list[str], repeats: int) -> dict[str, float]:
    """Median seconds to the first token per tier; asserts each sample came from the tier it is filed under."""
    timed = lambda engine, message: _time(engine, segment, message)   # noqa: E731
    cached, replica, uncached = engines["cached"], engines["replica"], engines["uncached"]
    timed(cached, messages[0])
    cached.disk.flush()
    if cached.shared is not None:
        cached.shared.flush()
    samples: dict[str, list[float]] = {"ram": [], "disk": [], "shared": [], "recompute": []}
    for i in range(repeats):
        samples["ram"].append(_expect(timed(cached, messages[1 + 4 * i]), "ram"))
        cached.cache.evict(1 << 60)   # RAM only: the files stay
        samples["disk"].append(_expect(timed(cached, messages[2 + 4 * i]), "disk"))
        if replica is not None:
            replica.cache.evict(1 << 60)
            samples["shared"].append(_expect(timed(replica, messages[3 + 4 * i]), "shared"))
        samples["recompute"].append(_expect(timed(uncached, messages[4 + 4 * i]), None))
    return {tier: statistics.median(values) for tier, values in samples.items() if values}


def _time(engine, segment: str, message: str) -> tuple[float, object]:
    from segcache.cache.keys import segment_hash
    from segcache.engine.prompt import SegmentText
    from segcache.engine.request import EngineRequest, PromptReport, SamplingParams, SegmentInput

    request = EngineRequest("bench", "chat", (SegmentInput(SegmentText(segment, "doc", segment_hash(segment))),),
                            ({"role": "user", "content": message},), sampling=SamplingParams(max_tokens=1, temperature=0))
    start = time.perf_counter()
    events = engine.run(request)
    elapsed = time.perf_counter() - start
    return elapsed, next(e for e in events if isinstance(e, PromptReport)).receipts[0]


def _expect(timed: tuple[float, object], tier: str | None) -> float:
    seconds, receipt = timed
    if receipt.tier != tier:
        raise RuntimeError(f"expected the segment from {tier or 'recompute'}, the receipt says {receipt.tier}")
    return seconds


def table(figures: dict[str, float], args) -> str:
    rows = [f"{'served from':<12} {'TTFT (s)':>9} {'vs recompute':>13}"]
    for tier in ("ram", "disk", "shared", "recompute"):
        if tier in figures:
            rows.append(f"{tier:<12} {figures[tier]:>9.3f} {figures['recompute'] / figures[tier]:>12.1f}x")
        else:
            rows.append(f"{tier:<12} {'n/a':>9}   (no redis-server)")
    return "\n".join(rows)


def markdown(figures: dict[str, float], args) -> str:
    lines = [f"`segcache bench tiers --model {args.model} --dtype {args.dtype} --repeats {args.repeats}`: a "
             f"{args.segment_tokens}-token segment + {args.message_tokens}-token message, engine only (no HTTP), one "
             "generated token, median of the samples. Disk = the tree emptied, KV read back from --disk-cache "
             "files; shared = a second replica with an empty tree reading it from a loopback redis-server "
             "(both checksum verified).", "", "| served from | TTFT (s) | speed-up vs recompute |", "|---|---|---|"]
    for tier in ("ram", "disk", "shared", "recompute"):
        if tier in figures:
            lines.append(f"| {tier} | {figures[tier]:.3f} | {figures['recompute'] / figures[tier]:.1f}x |")
    lines += ["", "The agents workload after a kill -9 and restart on the same --disk-cache (`segcache bench restart`) "
              "and 3 replicas behind nginx, affinity vs round-robin (`segcache bench replicas`): RELIABILITY.md "
              "sections 6 and 7."]
    return "\n".join(lines) + "\n"
