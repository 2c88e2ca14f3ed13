"""CLI subcommands of segcache.trace: analyze and replay."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segcache.trace.analysis import analyze_trace, parse_pool_sizes, write_outputs
from segcache.trace.report import render_json, render_table
from segcache.trace.tokens import load_tokenizer
from segcache.trace.tree_metric import DEFAULT_BLOCK_TOKENS

_TOKENIZER_HELP = ("tokenizer: 'default' (the served model's), 'tiny', a local tokenizer or model folder, a .gguf "
                   "file, or 'words' (whitespace words; no model, rough counts) (default: default)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets args.run to a function(args) -> exit code."""
    analyze = commands.add_parser("analyze", help="how much of a trace a prefix, substring or segment cache reuses",
                                  description=run_analyze.__doc__)
    analyze.add_argument("traces", nargs="+", metavar="TRACE", help="JSONL trace files")
    analyze.add_argument("--tokenizer", default="default", help=_TOKENIZER_HELP)
    analyze.add_argument("--format", choices=("table", "json"), default="table")
    analyze.add_argument("--block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS, metavar="N",
                         help="the tree metric cuts each part into blocks of N tokens, as a server started with "
                              "this --block-tokens does (default: %(default)s, the server's default)")
    analyze.add_argument("--pool-tokens", type=parse_pool_sizes, default=None, metavar="SIZES",
                         help="also sweep LRU pool sizes in tokens, e.g. 8k,32k,128k (default: unlimited only)")
    analyze.add_argument("--out", type=Path, default=None, metavar="DIR",
                         help="write a PNG per trace and report.html here (sweeps a default ladder of pool "
                              "sizes when --pool-tokens is not given)")
    analyze.set_defaults(run=run_analyze)

    replay = commands.add_parser("replay", help="replay a trace against a running segcache; compare what it "
                                 "cached with the prediction", description=run_replay.__doc__)
    replay.add_argument("trace", metavar="TRACE", help="a JSONL trace file")
    replay.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    replay.add_argument("--api-key", default=None, help="API key to send (its tenant's cache is used)")
    replay.add_argument("--model", default=None, help="model name to send (default: the first the server lists)")
    replay.add_argument("--max-tokens-per-request", type=int, default=None, metavar="N",
                        help="truncate each request's content to about N tokens (for a CPU model)")
    replay.add_argument("--max-output-tokens", type=int, default=1, metavar="N",
                        help="reply length to ask for; the trace's own replies are what later requests carry "
                             "(default: 1)")
    replay.add_argument("--keep-cache", action="store_true",
                        help="do not clear this tenant's cache first (the prediction assumes an empty cache)")
    replay.add_argument("--tokenizer", default="default", help="the served model's tokenizer, for the "
                        "prediction: 'default', 'tiny', a model folder or .gguf file (default: default)")
    replay.add_argument("--format", choices=("table", "json"), default="table")
    replay.set_defaults(run=run_replay)


def run_analyze(args: argparse.Namespace) -> int:
    """Per trace: the share of input tokens a prefix cache, a substring cache and segcache's segment tree
    could reuse, from the requests before it (all earlier inputs and outputs pooled)."""
    try:
        tokenizer = load_tokenizer(args.tokenizer)
        # Plots get a default ladder of pool sizes unless sizes were given; a table sweeps only on request.
        pool_sizes = args.pool_tokens if args.pool_tokens is not None else (None if args.out else [])
        if args.block_tokens < 1:
            raise ValueError("--block-tokens must be at least 1")
        analyzed = [analyze_trace(path, tokenizer, pool_sizes, args.block_tokens) for path in args.traces]
    except (OSError, ValueError) as exc:
        print(f"segcache analyze: {exc}", file=sys.stderr)
        return 2
    reports = [item.report for item in analyzed]
    print(render_json(reports) if args.format == "json" else render_table(reports))
    if args.out:
        for path in write_outputs(analyzed, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run_replay(args: argparse.Namespace) -> int:
    """Send a trace's requests to a running segcache in order (leading system block as a segment, the
    rest as messages) and print, per request, the tokens the server read from its cache beside the tokens
    analyze's segment-tree metric predicts. Exit status 1 if any request disagrees or fails."""
    import httpx
    import openai

    from segcache.trace.readers import read_trace
    from segcache.trace.replay_http import ReplayOptions, render_rows_json, render_rows_table, replay
    from segcache.trace.tokens import load_transformers_tokenizer

    options = ReplayOptions(url=args.url, api_key=args.api_key, model=args.model,
                            max_tokens_per_request=args.max_tokens_per_request,
                            max_output_tokens=args.max_output_tokens, keep_cache=args.keep_cache)
    try:
        trace = read_trace(args.trace)
        rows = replay(trace, options, load_transformers_tokenizer(args.tokenizer))
    except (OSError, ValueError, httpx.HTTPError, openai.APIError) as exc:
        print(f"segcache replay: {exc}", file=sys.stderr)
        return 2
    print(render_rows_json(rows) if args.format == "json" else render_rows_table(rows))
    return 0 if all(row.agrees for row in rows) else 1
