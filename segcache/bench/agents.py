"""`segcache bench agents`: the multi-agent workload against segcache and its peers, in one command.

Every system runs alone, one after another, as a real server on loopback; the same requests go to
each. Prints a table and the ratios; optionally writes JSON, a TTFT chart and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from segcache.bench import chart, markdown, peers, report
from segcache.bench.floor import measure_floor
from segcache.bench.runner import SystemResult, run_system
from segcache.bench.workload import Workload, build_workload

SECTION = "Agents benchmark"
FULL = {"scale": 1.0, "turns": 3, "max_tokens": 32}
QUICK = {"scale": 0.25, "turns": 2, "max_tokens": 12}  # under 3 minutes for all five systems here


def register(bench_subcommands: argparse._SubParsersAction) -> None:
    parser = bench_subcommands.add_parser("agents", help="multi-agent shared-block workload vs real peers",
                                          description=__doc__)
    parser.add_argument("--systems", default=",".join(peers.SYSTEM_NAMES),
                        help=f"comma-separated, any of {', '.join(peers.SYSTEM_NAMES)} (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"a small run: {QUICK} unless set explicitly")
    parser.add_argument("--model", default="default", choices=("default", "tiny"), help="segcache's model")
    parser.add_argument("--dtype", default="auto", help="segcache's --dtype (default: auto)")
    parser.add_argument("--scale", type=float, help="block sizes x this (A=1500, B/C=500, D/E=100 tokens)")
    parser.add_argument("--turns", type=int, help="rounds of agents 1..3 (default: 3)")
    parser.add_argument("--max-tokens", type=int, help="completion tokens per request (default: 32)")
    parser.add_argument("--cache-bytes", default="2GiB", help="segcache's KV budget (default: 2GiB)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--chart", type=Path, help="write a PNG of TTFT per request to this file")
    parser.add_argument("--markdown", type=Path, help=f"rewrite the '## {SECTION}' section of this file")
    parser.add_argument("--log-dir", type=Path, help="where server logs go (default: a new temporary folder)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    names = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in names if name not in peers.SYSTEMS]
    if unknown or not names:
        print(f"unknown system(s) {unknown}: choose from {', '.join(peers.SYSTEM_NAMES)}", file=sys.stderr)
        return 2
    from segcache.engine.model import load_tokenizer  # the default model's tokenizer sizes every block

    load_before = os.getloadavg()[0]
    tokenizer = load_tokenizer("default")
    workload = build_workload(tokenizer, **_workload_settings(args))
    options = peers.PeerOptions(model=args.model, cache_bytes=args.cache_bytes, dtype=args.dtype)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="segcache-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(_describe(workload, log_dir), flush=True)
    if load_before > 0.5 * (os.cpu_count() or 1):
        print(f"warning: the machine is busy (load average {load_before:.1f} on {os.cpu_count()} cores); every "
              "figure will be noisy, llama.cpp's most (its threads wait on each other)", file=sys.stderr, flush=True)
    results = [_run_one(peers.SYSTEMS[name], workload, tokenizer, options, log_dir) for name in names]
    summaries = [report.summarize(result) for result in results]
    ours = next((result for result in results if result.name == "segcache"), None)
    floor = measure_floor(ours, args.model, args.dtype) if ours else report.Floor(None, None)
    body = _body(summaries, floor, workload, args, load_before)
    print("\n" + body, flush=True)
    _write_outputs(args, results, summaries, floor, body)
    return 0


def _workload_settings(args: argparse.Namespace) -> dict[str, Any]:
    defaults = QUICK if args.quick else FULL
    return {key: value if getattr(args, key) is None else getattr(args, key) for key, value in defaults.items()}


def _run_one(spec: peers.SystemSpec, workload: Workload, tokenizer: Any, options: peers.PeerOptions,
             log_dir: Path) -> SystemResult:
    print(f"\n{spec.name}: starting", flush=True)
    result = run_system(spec, workload, tokenizer, options, log_dir)
    for r in result.requests:
        print(f"  a{r.agent_id}t{r.turn}: TTFT {r.ttft_s:.3f} s, prompt {r.usage.prompt_tokens} "
              f"(reused {r.usage.reused_tokens} [{r.usage.source}], expected {r.expected_reused}), "
              f"{r.completion_tokens} tokens in {r.latency_s:.2f} s", flush=True)
    print(f"  started in {result.startup_s:.1f} s; workload {result.total_s:.1f} s", flush=True)
    return result


def _describe(workload: Workload, log_dir: Path) -> str:
    sizes = ", ".join(f"{block.name}={block.num_tokens}" for block in workload.blocks)
    order = " ".join(f"a{step.agent.agent_id}t{step.turn}" for step in workload.steps)
    return (f"Workload: blocks {sizes} tokens; {len(workload.steps)} requests ({order}); "
            f"{workload.max_tokens} completion tokens each; server logs in {log_dir}")


def _body(summaries: list[report.SystemSummary], floor: report.Floor, workload: Workload,
          args: argparse.Namespace, load_before: float) -> str:
    command = "segcache bench agents " + shlex.join(sys.argv[3:] if sys.argv[1:3] == ["bench", "agents"]
                                                    else _flags_of(args))
    notes = [
        f"Command: `{command.strip()}`",
        "",
        _describe(workload, Path("<log dir>")).split("; server logs")[0] + ".",
        _models_note(args),
        f"Code: segcache {markdown.code_version()}. Machine: {os.cpu_count()} cores; load average {load_before:.1f} before the run, "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine slows every system, llama.cpp most).",
        "Reused tokens: segcache from `usage.cached_prefix_tokens`; llama-cpp-python from the "
        "`prefix-match hit` and `prompt eval` lines of its own log (source `server log`); `estimated` "
        "where a server said nothing. ≠ marks a total that disagrees with the workload's structure. "
        "KV held: prompt tokens the cache keeps by that structure (a prefix cache keeps a full copy of the "
        "context per entry; a tree keeps each part once), and the bytes by each server's own account "
        "(segcache: GET /v1/cache; llama-cpp-python: the state sizes its log reports saving).",
        "",
        report.table(summaries),
        "",
        *report.ratios(summaries, floor),
    ]
    return "\n".join(notes)


def _models_note(args: argparse.Namespace) -> str:
    ours = ("segcache runs SmolLM2-135M-Instruct dequantized from the GGUF to dense weights (dtype "
            f"{args.dtype})" if args.model == "default" else
            "segcache runs the tiny randomly initialised model (mechanics only, not comparable)")
    return ours + "; llama-cpp-python runs the same GGUF with its Q4_1 weights as they are."


def _flags_of(args: argparse.Namespace) -> list[str]:
    flags = ["--systems", args.systems, "--model", args.model]
    flags += ["--quick"] if args.quick else []
    for key in ("scale", "turns", "max_tokens", "json", "chart", "markdown"):
        if getattr(args, key) is not None:
            flags += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return flags


def _write_outputs(args: argparse.Namespace, results: list[SystemResult], summaries: list[report.SystemSummary],
                   floor: report.Floor, body: str) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(summaries, floor), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.chart:
        chart.ttft_chart(results, args.chart, title=f"TTFT per request, multi-agent workload ({args.model} model)")
        print(f"wrote {args.chart}")
        body += f"\n\n![TTFT per request]({args.chart.as_posix()})"
    markdown.write_section(args.markdown, SECTION, body)
