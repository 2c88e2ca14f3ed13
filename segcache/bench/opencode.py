"""`segcache bench opencode`: a real opencode session's requests replayed, the cached share of each.

The trace (examples/traces/opencode-two-dirs.jsonl) is opencode run once in each of two directories:
per directory a title request and the main request, whose system message differs between the two
only in its working-directory line near the end. One server per --block-tokens replays it from an
empty cache; what the server read from its cache is set beside what its block structure predicts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segcache.bench import peers
from segcache.bench.markdown import replace_section

SECTION = "opencode trace"
DEFAULT_TRACE = Path("examples/traces/opencode-two-dirs.jsonl")


@dataclass(frozen=True)
class Column:
    block_tokens: int
    rows: list  # segcache.trace.replay_http.ReplayRow, one per request


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("opencode", help="replay a real opencode session: cached share per request "
                                    "and --block-tokens", description=__doc__)
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help=f"a JSONL trace (default: {DEFAULT_TRACE})")
    parser.add_argument("--model", default="default", help="default | tiny | a local model path (default: default)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--block-tokens", default="64,128,256", metavar="SIZES",
                        help="one server per size, comma-separated (default: 64,128,256)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('-' to leave it alone)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from segcache.trace.readers import read_trace
    from segcache.trace.tokens import load_transformers_tokenizer

    trace = read_trace(args.trace)
    tokenizer = load_transformers_tokenizer(args.model)
    sizes = [int(size) for size in args.block_tokens.split(",")]
    columns = [Column(size, replay_with(trace, tokenizer, peers.PeerOptions(model=args.model, dtype=args.dtype,
                                                                             block_tokens=size)))
               for size in sizes]
    labels = [request_label(request) for request in trace.requests]
    print(table(columns, labels))
    if args.json:
        args.json.write_text(json.dumps(figures(columns, labels), indent=2) + "\n")
    if str(args.markdown) != "-":
        replace_section(args.markdown, SECTION, markdown(columns, labels, args))
    return 0 if all(row.agrees for column in columns for row in column.rows) else 1


def replay_with(trace, tokenizer, options: peers.PeerOptions) -> list:
    """Start a segcache with these options, replay the trace from an empty cache, stop it."""
    from segcache.trace.replay_http import ReplayOptions, replay

    with tempfile.TemporaryDirectory() as logs:
        server = peers.start(peers.SYSTEMS["segcache"], options, Path(logs))
        try:
            return replay(trace, ReplayOptions(url=server.base_url), tokenizer)
        finally:
            server.stop()


def request_label(request) -> str:
    """What a request holds, for the table: its segments (opencode's tools) and the roles of its messages."""
    segments = "+".join(str(s.get("id") or "segment") for s in request.segments or ())
    roles = ",".join(m["role"] for m in request.messages or ())
    return f"{segments} [{roles}]" if segments else f"[{roles}]"


def figures(columns: list[Column], labels: list[str]) -> list[dict]:
    return [{"request": index + 1, "holds": label, "input_tokens": columns[0].rows[index].input_tokens,
             "cached": {str(c.block_tokens): {"served": c.rows[index].cached_tokens,
                                              "predicted": c.rows[index].predicted_cached_tokens,
                                              "share": c.rows[index].cached_share} for c in columns}}
            for index, label in enumerate(labels)]


def cells(columns: list[Column], labels: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["#", "request holds", "prompt tokens"] + [f"cached, {c.block_tokens}-token blocks" for c in columns]
    body = []
    for index, label in enumerate(labels):
        first = columns[0].rows[index]
        row = [str(index + 1), label, "-" if first.input_tokens is None else f"{first.input_tokens:,}"]
        row += [_cached_cell(c.rows[index]) for c in columns]
        body.append(row)
    return header, body


def _cached_cell(row) -> str:
    if row.cached_tokens is None:
        return f"error: {row.error}"
    flag = "" if row.agrees else f" (predicted {row.predicted_cached_tokens:,})"
    return f"{row.cached_tokens:,} ({row.cached_share:.1%}){flag}"


def table(columns: list[Column], labels: list[str]) -> str:
    header, body = cells(columns, labels)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in [header, *body])


def markdown(columns: list[Column], labels: list[str], args: argparse.Namespace) -> str:
    header, body = cells(columns, labels)
    lines = [f"`segcache bench opencode --trace {args.trace} --model {args.model} --block-tokens {args.block_tokens}`",
             "replays a trace from an empty cache, one server per block size. Cached tokens as the server reported",
             "them (share of the prompt); each equals what the block structure predicts unless marked."]
    if args.trace.name == DEFAULT_TRACE.name:
        lines += ["The trace is a real opencode session, run once in each of two directories (examples/traces/",
                  "README.md): requests 1-2 in the first, 3-4 in the second. Request 4 is the second directory's",
                  "main request: its tools and its system message up to the changed working-directory line repeat."]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
