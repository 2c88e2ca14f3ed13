"""`segcache bench hit`: what one cached segment buys.

A 2,000-token segment followed by a 50-token message. Cold: the cache is empty (cleared before
each sample). Warm: the segment is cached and each request brings a new message. Floor: the time
to prefill only the warm request's new parts against the cached context, in the engine directly.
Warm TTFT over floor is the cost of everything that is not model arithmetic.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from segcache.bench import corpus, peers
from segcache.bench.markdown import replace_section

SECTION = "Cache hit"


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("hit", help="cold vs warm TTFT for one cached segment, and the engine floor")
    parser.add_argument("--model", default="default", help="default | tiny | a local model path")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--segment-tokens", type=int, default=2000)
    parser.add_argument("--message-tokens", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5, help="samples of each kind (median reported)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from segcache.engine.model import load_model

    loaded = load_model(args.model, args.dtype)
    segment, messages = build_texts(loaded.tokenizer, args.segment_tokens, args.message_tokens, 1 + 2 * args.repeats)
    options = peers.PeerOptions(model=args.model, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as logs:
        server = peers.start(peers.SYSTEMS["segcache"], options, Path(logs))
        try:
            cold, warm, reports = sample(server.base_url, loaded.model_id, segment, messages, args.repeats)
        finally:
            server.stop()
    floor = measure_floor(loaded, args.model, args.dtype, segment, messages[-args.repeats:])
    figures = summarize(cold, warm, floor, reports, args)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(figures))
    return 0


def build_texts(tokenizer, segment_tokens: int, message_tokens: int, num_messages: int) -> tuple[str, list[str]]:
    """Deterministic text from the standard library's documentation, cut to token counts."""
    docs = list(corpus.reference_docs(("json", "pathlib", "argparse", "collections", "functools", "itertools")))
    text = "\n\n".join(docs)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    segment = tokenizer.decode(ids[:segment_tokens]).rstrip() + "\n"
    rest = ids[segment_tokens:]
    messages = []
    for i in range(num_messages):
        chunk = rest[i * message_tokens: (i + 1) * message_tokens]
        messages.append(f"Question {i}: " + tokenizer.decode(chunk).strip())
    return segment, messages


def sample(base_url: str, model_id: str, segment: str, messages: list[str], repeats: int):
    cold, warm, reports = [], [], []
    with httpx.Client(timeout=600) as http:
        for i in range(repeats):
            http.delete(base_url + "/cache").raise_for_status()
            ttft, usage = stream_ttft(http, base_url, model_id, segment, messages[i])
            cold.append(ttft)
            reports.append(("cold", usage))
        stream_ttft(http, base_url, model_id, segment, messages[repeats])   # segment now cached
        for message in messages[-repeats:]:
            ttft, usage = stream_ttft(http, base_url, model_id, segment, message)
            warm.append(ttft)
            reports.append(("warm", usage))
    return cold, warm, reports


def stream_ttft(http: httpx.Client, base_url: str, model_id: str, segment: str, message: str) -> tuple[float, dict]:
    body = {"model": model_id, "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "segments": [{"id": "context", "content": segment}],
            "messages": [{"role": "user", "content": message}]}
    started = time.perf_counter()
    ttft, usage = None, {}
    with http.stream("POST", base_url + "/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and ttft is None:
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
    return (ttft if ttft is not None else time.perf_counter() - started), usage


def measure_floor(loaded, model: str, dtype: str, segment: str, messages: list[str]) -> list[float]:
    """Per warm message: prefill its new parts (message, generation prompt) against the cached context."""
    from segcache.engine.floor import prefill_floor_seconds
    from segcache.engine.prompt import SegmentText, build_chat_prompt

    floors = []
    for message in messages:
        prompt = build_chat_prompt(loaded.tokenizer, [SegmentText(segment, "context")],
                                   [{"role": "user", "content": message}])
        context = [t for p in prompt.parts[:-2] for t in p.token_ids]
        new_parts = [list(p.token_ids) for p in prompt.parts[-2:]]
        floors.append(prefill_floor_seconds(model, dtype, context, new_parts, repeats=3, loaded=loaded))
    return floors


def summarize(cold, warm, floor, reports, args) -> dict:
    warm_usage = [u for kind, u in reports if kind == "warm"]
    cold_usage = [u for kind, u in reports if kind == "cold"]
    return {
        "model": args.model, "dtype": args.dtype, "segment_tokens": args.segment_tokens,
        "message_tokens": args.message_tokens, "repeats": args.repeats,
        "prompt_tokens": warm_usage[0]["prompt_tokens"], "cached_tokens_warm": warm_usage[0]["cached_prefix_tokens"],
        "cached_tokens_cold": cold_usage[0]["cached_prefix_tokens"],
        "cold_ttft_s": statistics.median(cold), "warm_ttft_s": statistics.median(warm),
        "floor_s": statistics.median(floor),
        "cold_over_warm": statistics.median(cold) / statistics.median(warm),
        "warm_over_floor": statistics.median(warm) / statistics.median(floor),
        "samples": {"cold_ttft_s": cold, "warm_ttft_s": warm, "floor_s": floor},
    }


def rows(f: dict) -> list[tuple[str, str, str]]:
    new_tokens = f["prompt_tokens"] - f["cached_tokens_warm"]
    return [("cold TTFT (cache empty)", f"{f['cold_ttft_s'] * 1000:.1f} ms",
             f"cached {f['cached_tokens_cold']} of {f['prompt_tokens']} tokens"),
            ("warm TTFT (segment cached)", f"{f['warm_ttft_s'] * 1000:.1f} ms",
             f"cached {f['cached_tokens_warm']} of {f['prompt_tokens']} tokens"),
            ("floor (new parts only, in the engine)", f"{f['floor_s'] * 1000:.1f} ms", f"{new_tokens} tokens"),
            ("cold / warm", f"{f['cold_over_warm']:.1f}x", "goal: at least 10x"),
            ("warm / floor", f"{f['warm_over_floor']:.2f}x", "goal: at most 1.25x")]


def table(f: dict) -> str:
    width = max(len(r[0]) for r in rows(f))
    return "\n".join(f"{name:<{width}}  {value:>10}  {note}" for name, value, note in rows(f))


def markdown(f: dict) -> str:
    command = (f"segcache bench hit --model {f['model']} --dtype {f['dtype']} --segment-tokens {f['segment_tokens']} "
               f"--message-tokens {f['message_tokens']} --repeats {f['repeats']}")
    lines = [f"A {f['segment_tokens']}-token segment followed by a {f['message_tokens']}-token message; medians of "
             f"{f['repeats']} samples each, on a 2-core CPU that other work shares (ratios matter more than times).",
             "", f"Command: `{command}`", "", "| figure | value | note |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows(f)]
    return "\n".join(lines)
