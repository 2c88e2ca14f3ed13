"""`segcache bench tiers`: where a cached segment is served from, and what each tier costs.

A 2,000-token segment followed by a 50-token message, on the engine directly (no HTTP, one token
generated, so the time is the time to first token):

    recompute  an engine with --cache-bytes 0: every token prefilled
    ram        the segment's nodes in the tree
    disk       the tree emptied (RAM eviction only), the nodes read back from --disk-cache files

The shared tier (Valkey/Redis) is not built yet; its row says so.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
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
    segment, messages = build_texts(loaded.tokenizer, args.segment_tokens, args.message_tokens, 1 + 3 * args.repeats)
    with tempfile.TemporaryDirectory() as directory:
        cached = Engine(ServeConfig(model=args.model, dtype=args.dtype, disk_cache=directory), loaded=loaded)
        uncached = Engine(ServeConfig(model=args.model, dtype=args.dtype, cache_bytes=0), loaded=loaded)
        try:
            figures = sample(cached, uncached, segment, messages, args.repeats)
        finally:
            cached.close()
            uncached.close()
    print(table(figures, args))
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(figures, args))
    return 0


def sample(cached, uncached, segment: str, messages: list[str], repeats: int) -> dict[str, float]:
    """Median seconds to the first token per tier; asserts each sample came from the tier it is filed under."""
    timed = lambda engine, message: _time(engine, segment, message)   # noqa: E731
    timed(cached, messages[0])
    cached.disk.flush()
    ram, disk, recompute = [], [], []
    for i in range(repeats):
        ram.append(_expect(timed(cached, messages[1 + 3 * i]), "ram"))
        cached.cache.evict(1 << 60)   # RAM only: the files stay
        disk.append(_expect(timed(cached, messages[2 + 3 * i]), "disk"))
        recompute.append(_expect(timed(uncached, messages[3 + 3 * i]), None))
    return {"ram": statistics.median(ram), "disk": statistics.median(disk), "recompute": statistics.median(recompute)}


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
    for tier in ("ram", "disk", "recompute"):
        rows.append(f"{tier:<12} {figures[tier]:>9.3f} {figures['recompute'] / figures[tier]:>12.1f}x")
    rows.append(f"{'shared':<12} {'n/a':>9} {'(not built)':>13}")
    return "\n".join(rows)


def markdown(figures: dict[str, float], args) -> str:
    lines = [f"`segcache bench tiers --model {args.model} --dtype {args.dtype} --repeats {args.repeats}`: a "
             f"{args.segment_tokens}-token segment + {args.message_tokens}-token message, engine only (no HTTP), one "
             "generated token, median of the samples. Disk = the tree emptied, KV read back from --disk-cache "
             "files (checksum verified).", "", "| served from | TTFT (s) | speed-up vs recompute |", "|---|---|---|"]
    for tier in ("ram", "disk", "recompute"):
        lines.append(f"| {tier} | {figures[tier]:.3f} | {figures['recompute'] / figures[tier]:.1f}x |")
    lines.append("| shared (Valkey/Redis) | not built yet | |")
    return "\n".join(lines) + "\n"
