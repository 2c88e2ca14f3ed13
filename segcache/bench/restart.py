"""`segcache bench restart`: what the cache keeps across a kill -9, with and without the disk tier.

For each server (`--disk-cache DIR`, then the same without it) a fresh server starts on loopback, and
the multi-agent workload runs three times through the official openai SDK:

    cold     the first run: fills the cache
    warm     the same requests again on the running server           <- the reference
    kill -9  the server process; a new one starts on the same flags (and the same DIR)
    after    the same requests again, at once                        <- what survived

Prints, per server and run, cached tokens (and their share of the warm run's), the tier the segments'
cached tokens came from, TTFT p50 and the restart time (process start to /health answering 200).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from segcache.bench import markdown
from segcache.bench.agent_turns import AgentSession, RunFigures, run_in_order
from segcache.bench.workload import Workload, build_workload
from segcache.server.launch import free_port, wait_healthy

SECTION = "6. Restart: the agents workload after a kill -9"


@dataclass(frozen=True)
class RestartRuns:
    server: str               # "--disk-cache DIR" or "RAM only"
    cold: RunFigures
    warm: RunFigures
    after: RunFigures
    start_s: float            # first start, process to healthy
    restart_s: float          # after the kill -9, process to healthy


def register(bench_subcommands: argparse._SubParsersAction) -> None:
    parser = bench_subcommands.add_parser("restart", help="the agents workload before and after a kill -9 and restart",
                                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default | tiny | a local model path")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--agents", type=int, default=4, help="agents (agent i has workload agent i mod 4's blocks)")
    parser.add_argument("--scale", type=float, default=1.0, help="block sizes x this (A=1500, B/C=500, D/E=100)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without --disk-cache")
    parser.add_argument("--markdown", type=Path, help=f"rewrite the '## {SECTION}' section of this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from segcache.engine.model import load_tokenizer

    load_before = os.getloadavg()[0]
    workload = build_workload(load_tokenizer("default"), scale=args.scale, turns=args.turns, max_tokens=args.max_tokens)
    flags = ["--model", args.model, "--dtype", args.dtype]
    runs = []
    with tempfile.TemporaryDirectory(prefix="segcache-restart-") as directory:
        runs.append(restart_runs("--disk-cache DIR", workload, args.agents,
                                 flags + ["--disk-cache", str(Path(directory) / "disk")], Path(directory)))
        if not args.no_baseline:
            runs.append(restart_runs("RAM only", workload, args.agents, flags, Path(directory)))
    body = _body(args, workload, runs, load_before)
    print("\n" + body)
    markdown.write_section(args.markdown, SECTION, body)
    return 0


def restart_runs(name: str, workload: Workload, num_agents: int, flags: list[str], log_dir: Path) -> RestartRuns:
    """Cold and warm runs on one server, kill -9, a new server on the same flags, the after run."""
    replies: dict = {}
    print(f"{name}: starting", flush=True)
    server, url, start_s = start_server(flags, log_dir / "server-1.log")
    try:
        cold = _run(url, workload, num_agents, replies)
        warm = _run(url, workload, num_agents, replies)
    finally:
        server.kill()   # kill -9: no shutdown, no flush of what is still queued
        server.wait()
    print("  killed after the warm run; restarting", flush=True)
    server, url, restart_s = start_server(flags, log_dir / "server-2.log")
    try:
        after = _run(url, workload, num_agents, replies)
    finally:
        server.terminate()
        server.wait(timeout=60)
    runs = RestartRuns(name, cold, warm, after, start_s, restart_s)
    print(f"  warm {warm.cached_tokens} cached tokens, after the restart {after.cached_tokens} "
          f"({_ratio(after.cached_tokens, warm.cached_tokens)}), restart {restart_s:.1f} s", flush=True)
    return runs


def start_server(flags: list[str], log: Path) -> tuple[subprocess.Popen, str, float]:
    """`segcache serve` on a free loopback port; returns it, its URL and the seconds it took to be healthy."""
    port = free_port()
    command = [sys.executable, "-m", "segcache", "serve", "--port", str(port), "--log-level", "warning", *flags]
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 900, process, log)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url, time.perf_counter() - started


def _run(url: str, workload: Workload, num_agents: int, replies: dict) -> RunFigures:
    client = OpenAI(base_url=url + "/v1", api_key="segcache-bench", timeout=1800, max_retries=0)
    model_id = client.models.list().data[0].id
    sessions = [AgentSession(client, model_id, workload, i, replies=replies) for i in range(num_agents)]
    return RunFigures(tuple(run_in_order(sessions)))


def _ratio(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def table(runs: list[RestartRuns]) -> str:
    lines = ["| server | run | requests | prompt tokens | cached tokens | cached share | vs warm run "
             "| segment tokens by tier | first request cached | TTFT p50 s | start s |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in runs:
        for label, figures, start in (("cold", r.cold, r.start_s), ("warm", r.warm, None),
                                      ("after kill -9", r.after, r.restart_s)):
            tiers = ", ".join(f"{tier} {n}" for tier, n in sorted(figures.tiers().items())) or "-"
            first = figures.turns[0]
            lines.append(f"| {r.server} | {label} | {len(figures.turns)} | {figures.prompt_tokens} "
                         f"| {figures.cached_tokens} | {100 * figures.cached_share:.1f}% "
                         f"| {_ratio(figures.cached_tokens, r.warm.cached_tokens)} | {tiers} "
                         f"| {first.cached_tokens} of {first.prompt_tokens} | {figures.ttft_p50():.3f} "
                         f"| {'' if start is None else f'{start:.1f}'} |")
    return "\n".join(lines)


def kept(runs: list[RestartRuns]) -> list[str]:
    """What each restart kept: of the tokens the warm run cached beyond the cold run's in-run reuse (the
    cache's state before the kill), the share the run after the restart also cached."""
    lines = []
    for r in runs:
        before = r.warm.cached_tokens - r.cold.cached_tokens
        kept_tokens = r.after.cached_tokens - r.cold.cached_tokens
        lines.append(f"- {r.server}: the restart kept {kept_tokens} of the {before} tokens the warm run cached "
                     f"beyond a cold run ({_ratio(kept_tokens, before)}); after/warm cached tokens "
                     f"{_ratio(r.after.cached_tokens, r.warm.cached_tokens)}; TTFT p50 after/warm "
                     f"{r.after.ttft_p50() / r.warm.ttft_p50():.2f}x")
    return lines


def _body(args: argparse.Namespace, workload: Workload, runs: list[RestartRuns], load_before: float) -> str:
    command = "segcache bench restart " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "restart"] else [])
    sizes = ", ".join(f"{b.name}={b.num_tokens}" for b in workload.blocks)
    return "\n".join([
        f"Command: `{command.strip()}`",
        "",
        f"{args.agents} agents (agent i has the blocks of workload agent i mod 4; blocks {sizes} tokens), "
        f"{args.turns} turns each, {workload.max_tokens} completion tokens, one request at a time, greedy, "
        f"streamed with the openai SDK; the three runs send byte-identical requests (replies recorded in the "
        f"cold run are replayed). Model: {args.model} (dtype {args.dtype}). The server is killed with SIGKILL "
        "right after the warm run and restarted on the same flags; \"start s\" is process start to /health 200. "
        "Segment tokens by tier: cached tokens of the segments' receipts, by the tier that served them. "
        f"Machine: {os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        table(runs),
        "",
        *kept(runs),
    ])
