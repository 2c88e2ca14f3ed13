"""CLI subcommands of segcache.client: `segcache lint LOG.jsonl`."""

from __future__ import annotations

import argparse
import json
import sys


def register(commands: argparse._SubParsersAction) -> None:
    """Add this package's subcommands; each sets args.run to a function(args) -> exit code."""
    lint = commands.add_parser(
        "lint", help="find what breaks prefix reuse in a request log",
        description="Reads a request log (segcache's --trace-file, or OpenAI chat requests one JSON per line, "
                    "optionally as {'request': ..., 'response': ...}), finds where each request diverges from "
                    "the closest earlier one, and ranks the causes by tokens lost.")
    lint.add_argument("log", metavar="LOG.jsonl", help="the request log")
    lint.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    lint.add_argument("--min-run", type=int, default=16,
                      help="shortest run of tokens counted as reusable after a divergence (default: 16)")
    lint.add_argument("--verbose", action="store_true", help="also list every request that lost tokens")
    lint.set_defaults(run=run_lint)


def run_lint(args: argparse.Namespace) -> int:
    from segcache.client.lint import lint
    from segcache.client.lint_logs import LogFormatError, read_log
    from segcache.client.tokenizer import load_tokenizer

    try:
        prompts = read_log(args.log)
    except (OSError, LogFormatError) as error:
        print(f"segcache lint: {error}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer()
    report = lint(prompts, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], args.min_run)
    print(json.dumps(report.as_json(), indent=2) if args.format == "json" else report.as_text(args.verbose))
    return 0
