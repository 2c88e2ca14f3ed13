"""`segcache bench replicas`: N replicas sharing a redis-server, behind nginx with cache affinity or round-robin.

Each routing runs on a fresh cluster (`deploy/cluster --replicas N --balance B`: a redis-server, N
`segcache serve --shared-cache ...` and nginx, all on loopback). The multi-agent workload then runs with
`--agents` agents at once, each sending its turns one after another with `X-Segcache-Affinity: agent-<i>`
(what a client sets from its prompt_cache_key). With affinity, nginx hashes that header (`hash ...
consistent`), so an agent's turns stay on one replica; round-robin ignores it. Prints the cached share
of prompt tokens, the tier the segments' cached tokens came from, TTFT p50/p90 and requests per replica.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

from segcache.bench import markdown
from segcache.bench.agent_turns import AgentSession, RunFigures
from segcache.bench.workload import Workload, build_workload
from segcache.server.launch import free_port

SECTION = "7. Replicas: cache affinity vs round-robin"
ROOT = Path(__file__).resolve().parents[2]
BALANCES = ("affinity", "round-robin")
ROUTINGS = BALANCES + tuple(f"{b}:no-store" for b in BALANCES)   # :no-store: replicas without --shared-cache


@dataclass(frozen=True)
class ClusterRun:
    balance: str
    figures: RunFigures
    wall_s: float
    start_s: float


def register(bench_subcommands: argparse._SubParsersAction) -> None:
    parser = bench_subcommands.add_parser("replicas", help="N replicas behind nginx: cache affinity vs round-robin",
                                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--agents", type=int, default=12, help="agents at once (agent i: workload agent i mod 4)")
    parser.add_argument("--model", default="default", help="default | tiny | a local model path")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per replica (default: %(default)s)")
    parser.add_argument("--scale", type=float, default=0.5, help="block sizes x this (A=1500, B/C=500, D/E=100)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--balances", default=",".join(BALANCES),
                        help=f"comma-separated, of {', '.join(ROUTINGS)} (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, help=f"rewrite the '## {SECTION}' section of this file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from segcache.engine.model import load_tokenizer

    balances = [b.strip() for b in args.balances.split(",") if b.strip()]
    if not balances or any(b not in ROUTINGS for b in balances):
        print(f"--balances takes {', '.join(ROUTINGS)}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    workload = build_workload(load_tokenizer("default"), scale=args.scale, turns=args.turns, max_tokens=args.max_tokens)
    serve_flags = ["--model", args.model, "--dtype", args.dtype, "--threads", str(args.threads),
                   "--log-level", "warning"]
    runs = []
    for balance in balances:
        print(f"{balance}: starting {args.replicas} replicas", flush=True)
        runs.append(cluster_run(balance, args.replicas, args.agents, workload, serve_flags))
        print("  " + one_line(runs[-1]), flush=True)
    body = _body(args, workload, runs, load_before)
    print("\n" + body)
    markdown.write_section(args.markdown, SECTION, body)
    return 0


def cluster_run(balance: str, num_replicas: int, num_agents: int, workload: Workload, serve_flags: list[str],
                run_dir: Path | None = None) -> ClusterRun:
    """A fresh cluster with this routing (`balance`, or `balance:no-store`), the agents at once, the cluster stopped."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="segcache-replicas-"))
    port = free_port()
    nginx_balance, _, no_store = balance.partition(":")
    command = [str(ROOT / "deploy" / "cluster"), "--replicas", str(num_replicas), "--port", str(port),
               "--balance", nginx_balance, *(["--no-shared-cache"] if no_store else []), "--", *serve_flags]
    started = time.perf_counter()
    with open(run_dir / "cluster.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "RUN_DIR": str(run_dir), "PYTHON": sys.executable})
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_router(url, process, run_dir / "cluster.log")
        start_s = time.perf_counter() - started
        figures, wall_s = _agents_at_once(url, workload, num_agents)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    return ClusterRun(balance, figures, wall_s, start_s)


def _wait_router(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 900) -> None:
    """nginx answers /health once the cluster command has seen every replica healthy and started it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"deploy/cluster exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the cluster at {url} did not answer within {timeout_s} s: {log.read_text()[-2000:]}")


def _agents_at_once(url: str, workload: Workload, num_agents: int) -> tuple[RunFigures, float]:
    client = OpenAI(base_url=url + "/v1", api_key="segcache-bench", timeout=1800, max_retries=0)
    model_id = client.models.list().data[0].id
    sessions = [AgentSession(client, model_id, workload, i, affinity=f"agent-{i}") for i in range(num_agents)]
    started = time.perf_counter()
    with ThreadPoolExecutor(num_agents) as pool:
        per_agent = list(pool.map(AgentSession.run_all, sessions))
    wall_s = time.perf_counter() - started
    return RunFigures(tuple(turn for turns in per_agent for turn in turns)), wall_s


def one_line(run: ClusterRun) -> str:
    f = run.figures
    return (f"{len(f.turns)} requests in {run.wall_s:.1f} s, cached {100 * f.cached_share:.1f}% of prompt tokens, "
            f"TTFT p50 {f.ttft_p50():.2f} s, per replica {'/'.join(map(str, f.replicas().values()))}")


def table(runs: list[ClusterRun]) -> str:
    lines = ["| routing | requests | prompt tokens | cached tokens | cached share | segment tokens by tier "
             "| TTFT p50 s | TTFT p90 s | wall s | requests per replica | agents per replica |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|"]
    for r in runs:
        f = r.figures
        tiers = ", ".join(f"{tier} {n}" for tier, n in sorted(f.tiers().items())) or "-"
        lines.append(f"| {r.balance} | {len(f.turns)} | {f.prompt_tokens} | {f.cached_tokens} "
                     f"| {100 * f.cached_share:.1f}% | {tiers} | {f.ttft_p50():.2f} | {f.ttft_percentile(90):.2f} "
                     f"| {r.wall_s:.1f} | {' / '.join(map(str, f.replicas().values()))} "
                     f"| {' / '.join(map(str, f.agents_per_replica().values()))} |")
    return "\n".join(lines)


def _body(args: argparse.Namespace, workload: Workload, runs: list[ClusterRun], load_before: float) -> str:
    command = "segcache bench replicas " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "replicas"] else [])
    sizes = ", ".join(f"{b.name}={b.num_tokens}" for b in workload.blocks)
    model = ("the tiny random model (mechanics only: cached shares do not depend on weights, times do)"
             if args.model == "tiny" else f"SmolLM2-135M-Instruct ({args.model}, dtype {args.dtype})")
    return "\n".join([
        f"Command: `{command.strip()}`",
        "",
        f"{args.replicas} replicas (`--threads {args.threads}` each) sharing one redis-server (`:no-store`: "
        f"without `--shared-cache`), behind nginx; a fresh cluster per routing. {args.agents} agents at once (agent i has the blocks of workload agent i mod 4; "
        f"blocks {sizes} tokens), {args.turns} turns each (agent 4's kind joins one round late), "
        f"{workload.max_tokens} completion tokens, greedy, streamed with the openai SDK, each agent sending "
        f"`X-Segcache-Affinity: agent-<i>`. Model: {model}. Requests and agents per replica: in replica order. "
        f"Machine: {os.cpu_count()} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        table(runs),
    ])
