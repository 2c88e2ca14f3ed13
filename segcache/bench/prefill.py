"""`segcache bench prefill`: time to first token of a cold multi-agent prompt and of a cached turn, per system.

All systems run at once, each a real server on loopback, and their timed requests interleave (one at a
time, the order rotating each round), so a busy spell on this shared machine falls on every system alike.
Each round sends every system, streaming with the official openai SDK and max_tokens=1:

    cold    agent 1's first turn (blocks A+B+D, ~2,140 tokens) behind a line no earlier prompt had,
            so nothing of it is cached anywhere;
    turn    the same conversation one turn later: a fixed assistant reply and the next question
            (~60 new tokens after the cached ones).

segcache sends the blocks as segments, the peers as one system message (the same text). A first round,
not timed, warms every server up.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from openai import OpenAI

from segcache.bench import markdown, peers
from segcache.bench.concurrent import FlaggedSpec
from segcache.bench.runner import _stream
from segcache.bench.weights import rotations
from segcache.bench.workload import Block, Workload, build_workload, messages_for, segments_for

SECTION = "Prefill against peers"
REPLY = "I will read the decoder's string scanning first, then answer with the exact line."
SYSTEMS = {spec.name: spec for spec in (
    FlaggedSpec("segcache", True, "segments", "segcache"),
    peers.VLLM,
    peers.LLAMA_SERVER,
)}


@dataclass
class Timings:
    system: str
    cold_s: list[float]
    turn_s: list[float]
    cold_tokens: int = 0      # prompt tokens of the cold request, as the server counted them
    turn_tokens: int = 0      # prompt tokens of the turn
    turn_cached: int | None = None   # of which the server says it reused (None: it does not say)


def register(bench_subcommands: argparse._SubParsersAction) -> None:
    parser = bench_subcommands.add_parser("prefill", help="TTFT of a cold prompt and a cached turn, against peers",
                                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="segcache,vllm-cpu",
                        help=f"comma-separated, any of {', '.join(SYSTEMS)} (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median; default: %(default)s)")
    parser.add_argument("--model", default="default", choices=("default", "tiny"))
    parser.add_argument("--dtype", default="auto", help="segcache's --dtype")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="every system's thread count")
    parser.add_argument("--llama-server", type=Path, default=peers.llama_server_path(),
                        help="llama.cpp's llama-server binary (scripts/setup-llama-server; default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help=f"rewrite the '## {SECTION}' section of this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    if not names or any(n not in SYSTEMS for n in names) or args.rounds < 1:
        print(f"choose systems from {', '.join(SYSTEMS)} and at least one round", file=sys.stderr)
        return 2
    try:
        specs = [peers.locate(SYSTEMS[name], args.llama_server) for name in names]
    except peers.PeerMissing as missing:
        print(missing, file=sys.stderr)
        return 2
    from segcache.engine.model import load_tokenizer

    workload = build_workload(load_tokenizer("default"), turns=2, max_tokens=1)
    options = peers.PeerOptions(model=args.model, dtype=args.dtype, threads=args.threads, startup_timeout_s=1200.0)
    log_dir = Path(tempfile.mkdtemp(prefix="segcache-prefill-"))
    servers = []
    load_before = None
    try:
        for spec in specs:
            print(f"starting {spec.name} ...", file=sys.stderr, flush=True)
            servers.append(peers.start(spec, options, log_dir))
        clients = [OpenAI(base_url=s.base_url, api_key="segcache-bench", timeout=600, max_retries=0) for s in servers]
        model_ids = [c.models.list().data[0].id for c in clients]
        results = [Timings(spec.name, [], []) for spec in specs]
        for i in range(len(specs)):                        # warm-up, not timed
            _conversation(specs[i], clients[i], model_ids[i], workload, "warm-up", results[i], timed=False)
        load_before = os.getloadavg()[0]
        for round_number, order in enumerate(rotations(len(specs), args.rounds)):
            print(f"round {round_number + 1}: " + ", ".join(specs[i].name for i in order), file=sys.stderr, flush=True)
            for i in order:
                _conversation(specs[i], clients[i], model_ids[i], workload, f"round {round_number + 1}", results[i])
    finally:
        for server in servers:
            server.stop()
    body = _body(args, results, load_before)
    print("\n" + body)
    markdown.write_section(args.markdown, SECTION, body)
    return 0


def _conversation(spec: peers.SystemSpec, client: OpenAI, model_id: str, workload: Workload, tag: str,
                  timings: Timings, timed: bool = True) -> None:
    """The cold request, then the next turn of the same conversation; their TTFTs go into `timings`."""
    first, second = workload.steps[0], next(s for s in workload.steps if s.agent == workload.steps[0].agent
                                            and s.turn == 2)
    fresh = _fresh(workload, tag + " " + spec.name)
    history = ({"role": "user", "content": first.user_message}, {"role": "assistant", "content": REPLY})
    for step, past, into in ((first, (), timings.cold_s), (second, history, timings.turn_s)):
        request = {"messages": messages_for(fresh, step, past, with_system=not spec.sends_segments), "max_tokens": 1}
        if spec.sends_segments:
            request["extra_body"] = {"segments": segments_for(fresh, step)}
        streamed = _stream(client, model_id, request)
        if not timed:
            continue
        into.append(streamed.ttft_s)
        usage = streamed.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        if step is first:
            timings.cold_tokens = usage.get("prompt_tokens") or 0
        else:
            timings.turn_tokens = usage.get("prompt_tokens") or 0
            timings.turn_cached = details.get("cached_tokens")


def _fresh(workload: Workload, tag: str) -> Workload:
    """The workload with a first line in block A that no earlier prompt had: nothing of it is cached."""
    blocks = tuple(Block(b.name, b.label, f"Session: {tag}.\n{b.text}", b.num_tokens) if b.name == "A" else b
                   for b in workload.blocks)
    return replace(workload, blocks=blocks)


def table(results: list[Timings]) -> str:
    lines = ["| system | cold: prompt tokens | cold TTFT s, median (min) | cold prefill tok/s | turn: prompt tokens"
             " (reported cached) | turn TTFT s, median (min) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        cold, turn = statistics.median(r.cold_s), statistics.median(r.turn_s)
        cached = "-" if r.turn_cached is None else str(r.turn_cached)
        lines.append(f"| {r.system} | {r.cold_tokens} | {cold:.3f} ({min(r.cold_s):.3f}) | {r.cold_tokens / cold:.0f}"
                     f" | {r.turn_tokens} ({cached}) | {turn:.3f} ({min(r.turn_s):.3f}) |")
    return "\n".join(lines)


def ratios(results: list[Timings], ours: str = "segcache") -> list[str]:
    mine = next((r for r in results if r.system == ours), None)
    lines = []
    for other in results:
        if mine is None or other is mine:
            continue
        parts = []
        for label, a, b in (("cold TTFT", mine.cold_s, other.cold_s), ("turn TTFT", mine.turn_s, other.turn_s)):
            ratio = statistics.median(a) / statistics.median(b)
            parts.append(f"{label} {ratio:.2f}x {other.system}'s")
        lines.append(f"- {ours}: " + ", ".join(parts) + " (below 1.00x is faster)")
    return lines


def _body(args: argparse.Namespace, results: list[Timings], load_before: float | None) -> str:
    command = "segcache bench prefill " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "prefill"] else [])
    caveats = [peers.VLLM_CAVEAT] if any(r.system == "vllm-cpu" for r in results) else []
    caveats += [peers.LLAMA_SERVER_CAVEAT] if any(r.system == "llama-server" for r in results) else []
    load = f"{load_before:.1f}" if load_before is not None else "?"
    return "\n".join([
        f"Command: `{command.strip()}`",
        "",
        "All systems up at once, their requests interleaved (order rotating each round), streaming, max_tokens=1: "
        "cold = agent 1's first turn (blocks A+B+D) behind a first line no earlier prompt had; turn = the same "
        "conversation one turn later (a fixed reply and the next question). segcache sends the blocks as segments "
        f"(--dtype {args.dtype}), the peers one system message. {args.threads} threads each; machine: "
        f"{os.cpu_count()} cores, load average {load} before the timed rounds, {os.getloadavg()[0]:.1f} after.",
        "",
        table(results),
        "",
        *ratios(results),
        *([""] + caveats if caveats else []),
    ])
