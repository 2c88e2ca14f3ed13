"""CLI subcommands of segcache.trace: analyze and replay."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segcache.trace.analysis import analyze_trace, parse_pool_sizes, write_outputs
from segcache.trace.report import render_json, render_table
from segcache.trace.tokens import load_tokenizer

_TOKENIZER_HELP = ("tokenizer: 'default' (the served model's), 'tiny', a local tokenizer or model folder, a .gguf "
                   "file, or 'words' (whitespace words; no model, rough counts) (default: default)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets args.run to a function(args) -> exit code."""
    analyze = commands.add_parser("analyze", help="how much of a trace a prefix, substring or segment cache reuses",
                                  description=run_analyze.__doc__)
    analyze.add_argument("traces", nargs="+", metavar="TRACE", help="JSONL trace files")
    analyze.add_argument("--tokenizer", default="default", help=_TOKENIZER_HELP)
    analyze.add_argument("--format", choices=("table", "json"), default="table")
    analyze.add_argument("--pool-tokens", type=parse_pool_sizes, default=None, metavar="SIZES",
                         help="also sweep LRU pool sizes in tokens, e.g. 8k,32k,128k (default: unlimited only)")
    analyze.add_argument("--out", type=Path, default=None, metavar="DIR",
                         help="write a PNG per trace and report.html here (sweeps a default ladder of pool "
                              "sizes when --pool-tokens is not given)")
    analyze.set_defaults(run=run_analyze)


def run_analyze(args: argparse.Namespace) -> int:
    """Per trace: the share of input tokens a prefix cache, a substring cache and segcache's segment tree
    could reuse, from the requests before it (all earlier inputs and outputs pooled)."""
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        sweep = args.pool_tokens if args.pool_tokens is not None else ([] if args.out else None)
        analyzed = [analyze_trace(path, tokenizer, sweep) for path in args.traces]
    except (OSError, ValueError) as exc:
        print(f"segcache analyze: {exc}", file=sys.stderr)
        return 2
    reports = [item.report for item in analyzed]
    print(render_json(reports) if args.format == "json" else render_table(reports))
    if args.out:
        for path in write_outputs(analyzed, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0
